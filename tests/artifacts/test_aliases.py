"""Model references, aliases and retired versions on a real SQLite MLMD."""

from __future__ import annotations

import threading

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts import InvalidNameError, MetadataError, Model, UnservableVersionError


@pytest.fixture
def iris_versions(home, classifier) -> dict[str, int]:
    """Three versions of model "iris", submitted out of natural order."""
    return {
        v: Model(model=classifier, name="iris", version=v).submit_artifact()
        for v in ("1.9.0", "1.10.0", "1.0.0")
    }


def test_three_reference_forms_resolve(iris_versions):
    artifacts.set_alias("iris", "champion", "1.0.0")

    latest = artifacts.resolve("iris")
    assert (latest.version, latest.artifact_id, latest.alias) == (
        "1.10.0", iris_versions["1.10.0"], None)
    assert artifacts.resolve("iris:1.9.0").artifact_id == iris_versions["1.9.0"]
    champion = artifacts.resolve("iris@champion")
    assert (champion.version, champion.alias) == ("1.0.0", "champion")


def test_alias_move_keeps_who_when_and_the_previous_version(iris_versions, monkeypatch):
    monkeypatch.setenv("KFP_SERVE_USER", "ana")
    artifacts.set_alias("iris", "champion", "1.0.0")
    moved = artifacts.set_alias("iris", "champion", "1.9.0", author="bo", reason="better AUC")

    assert (moved.previous_version, moved.version, moved.author) == ("1.0.0", "1.9.0", "bo")
    assert artifacts.previous_version("iris", "champion") == "1.0.0"
    assert artifacts.list_aliases("iris") == {"champion": "1.9.0"}
    history = artifacts.alias_history("iris", alias="champion")
    assert [(c.author, c.previous_version, c.version) for c in history] == [
        ("ana", None, "1.0.0"), ("bo", "1.0.0", "1.9.0")]
    assert history[1].reason == "better AUC"
    assert history[0].time <= history[1].time


def test_unknown_alias_lists_the_models_aliases(iris_versions):
    artifacts.set_alias("iris", "champion", "1.0.0")
    artifacts.set_alias("iris", "challenger", "1.10.0")
    with pytest.raises(MetadataError, match=r"no alias 'prod'; its aliases: iris@challenger, "
                                            r"iris@champion"):
        artifacts.resolve("iris@prod")


def test_unknown_version_lists_versions_and_bad_refs_show_the_forms(iris_versions):
    versions = r"no version '3.0.0'; its versions: 1.10.0, 1.9.0, 1.0.0$"
    with pytest.raises(MetadataError, match=versions):
        artifacts.set_alias("iris", "champion", "3.0.0")
    with pytest.raises(MetadataError, match="'name@alias' or 'name:version'"):
        artifacts.resolve("iris@champion:1.0.0")
    with pytest.raises(InvalidNameError, match="model name 'Iris' is not a valid DNS-1123"):
        artifacts.resolve("Iris@champion")


def test_archived_version_cannot_be_served_and_latest_skips_it(iris_versions):
    artifacts.archive("iris", "1.10.0", reason="trained on leaked labels")

    assert artifacts.resolve("iris").version == "1.9.0"
    with pytest.raises(UnservableVersionError) as e:
        artifacts.resolve("iris:1.10.0")
    assert "archived" in str(e.value) and "leaked labels" in str(e.value)
    assert "the latest servable version is iris:1.9.0" in str(e.value)
    with pytest.raises(UnservableVersionError, match="can no longer be served"):
        artifacts.set_alias("iris", "champion", "1.10.0")
    # The record itself stays for lineage.
    assert artifacts.get_artifact(iris_versions["1.10.0"]).version == "1.10.0"


def test_a_version_an_alias_points_at_cannot_be_retired(iris_versions):
    artifacts.set_alias("iris", "champion", "1.9.0")
    with pytest.raises(MetadataError, match="iris@champion point"):
        artifacts.deprecate("iris", "1.9.0")
    assert artifacts.resolve("iris@champion").version == "1.9.0"


def test_every_version_retired_says_so(iris_versions):
    for v in iris_versions:
        artifacts.deprecate("iris", v)
    with pytest.raises(UnservableVersionError, match="every version of model 'iris'"):
        artifacts.resolve("iris")


def test_concurrent_moves_lose_no_history(iris_versions):
    versions = list(iris_versions)
    errors: list[BaseException] = []

    def move(i: int) -> None:
        try:
            artifacts.set_alias("iris", "champion", versions[i % 3], author=f"t{i}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=move, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = artifacts.alias_history("iris", alias="champion")
    assert len(history) == 8
    # Each move starts where the one before it ended: no lost update.
    for before, after in zip(history, history[1:], strict=False):
        assert after.previous_version == before.version
    assert artifacts.list_aliases("iris")["champion"] == history[-1].version
