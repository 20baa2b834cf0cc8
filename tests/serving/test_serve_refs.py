"""serve() by model reference: name, name:version, name@alias; retired versions refused."""

from __future__ import annotations

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts.errors import MetadataError
from kfp_serve.serving import constants, serve


@pytest.fixture
def home(tmp_path, monkeypatch):
    for var in ("KFP_SERVE_MLMD", "KFP_SERVE_SNAPSHOT_STORE", "METADATA_GRPC_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def versions(home):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    ids = {}
    for version, c in (("1.0.0", 0.1), ("2.0.0", 1.0)):
        model = LogisticRegression(C=c, max_iter=500).fit(X, y)
        ids[version] = artifacts.Model(model=model, name="iris", version=version).submit_artifact()
    return ids


def _labels(manifest: dict) -> dict:
    return manifest["metadata"]["labels"]


@pytest.mark.parametrize(
    ("ref", "version", "alias"),
    [
        ("iris", "2.0.0", None),
        ("iris:1.0.0", "1.0.0", None),
        ("iris@champion", "1.0.0", "champion"),
    ],
    ids=["latest", "version", "alias"],
)
def test_reference_forms_serve_the_right_version(versions, ref, version, alias):
    artifacts.set_alias("iris", "champion", "1.0.0")
    manifest = serve(ref, dry_run=True)
    labels = _labels(manifest)
    assert labels[constants.LABEL_MODEL_ID] == str(versions[version])
    assert labels[constants.LABEL_MODEL_VERSION] == version
    assert labels[constants.LABEL_MODEL_NAME] == "iris"
    assert labels.get(constants.LABEL_MODEL_ALIAS) == alias
    assert manifest["metadata"]["name"] == "iris"
    snapshot = artifacts.get_artifact(versions[version]).snapshot_uri
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == snapshot


def test_an_alias_move_changes_what_is_served(versions):
    artifacts.set_alias("iris", "champion", "1.0.0")
    first = serve("iris@champion", dry_run=True)
    artifacts.set_alias("iris", "champion", "2.0.0")
    second = serve("iris@champion", dry_run=True)
    assert _labels(first)[constants.LABEL_MODEL_VERSION] == "1.0.0"
    assert _labels(second)[constants.LABEL_MODEL_VERSION] == "2.0.0"


def test_archived_version_is_refused_by_reference_and_by_id(versions):
    artifacts.archive("iris", "2.0.0", reason="drifted")
    for ref in ("iris:2.0.0", versions["2.0.0"]):
        with pytest.raises(artifacts.UnservableVersionError,
                           match="latest servable version is iris:1.0.0"):
            serve(ref, dry_run=True)
    assert _labels(serve("iris", dry_run=True))[constants.LABEL_MODEL_VERSION] == "1.0.0"


def test_unknown_alias_lists_aliases(versions):
    artifacts.set_alias("iris", "champion", "2.0.0")
    with pytest.raises(MetadataError, match="no alias 'staging'; its aliases: iris@champion"):
        serve("iris@staging", dry_run=True)


def test_a_transformer_by_name_but_not_by_alias(versions):
    from sklearn.datasets import load_iris
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(load_iris(return_X_y=True)[0])
    tid = artifacts.Transformer(name="iris-scaler", transformer=scaler).submit_artifact()
    manifest = serve("iris", "iris-scaler", dry_run=True)
    assert _labels(manifest)[constants.LABEL_TRANSFORMER_ID] == str(tid)
    with pytest.raises(MetadataError, match="aliases name model versions"):
        serve("iris", "iris-scaler@champion", dry_run=True)
