"""``serve --multi``, ``models load|unload`` and ``predict --model`` on a real local endpoint;
``models [NAME]`` still lists the recorded artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli.conftest import assert_clean_error, stop_quietly

NAME = "cli-regions"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def regional(iris):
    """Three models, each with its own labels: {name: (id, estimator)}."""
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts

    X, y = iris
    out = {}
    for i, region in enumerate(("east", "west", "north")):
        est = LogisticRegression(max_iter=300).fit(X, y + 10 * i)
        name = f"cli-{region}"
        out[name] = (artifacts.Model(model=est, name=name, version="1.0.0").submit_artifact(),
                     est)
    return out


def test_serve_multi_then_load_predict_unload(cli, regional):
    east, west, north = (regional[f"cli-{r}"] for r in ("east", "west", "north"))
    try:
        served = cli("serve", "--multi", NAME, str(east[0]), "cli-west:1.0.0",
                     "--config", '{"limits": {"memory": "256Mi"}}', "--memory", "32Mi",
                     "--timeout", "120")
        assert served.exit_code == 0, served.stderr
        assert f"endpoint '{NAME}' is ready" in served.stdout
        assert "cli-east, cli-west" in served.stdout

        answer = cli("predict", NAME, "--model", "cli-west", "--data", json.dumps(ROWS))
        assert answer.exit_code == 0, answer.stderr
        assert json.loads(answer.stdout)["predictions"] == west[1].predict(
            np.array(ROWS)).tolist()

        loaded = cli("models", "load", NAME, "cli-north", "--memory", "48Mi",
                     "--output", "json")
        assert loaded.exit_code == 0, loaded.stderr
        rows = {r["model"]: r for r in json.loads(loaded.stdout)}
        assert set(rows) == {"cli-east", "cli-west", "cli-north"}
        assert rows["cli-north"]["memory"] == "48Mi" and rows["cli-north"]["ready"] == "ready"
        assert rows["cli-north"]["version"] == "1.0.0"
        answer = cli("predict", NAME, "--model", "cli-north", "--data", json.dumps(ROWS))
        assert json.loads(answer.stdout)["predictions"] == north[1].predict(
            np.array(ROWS)).tolist()

        refused = cli("models", "load", NAME, "cli-iris-absent")
        assert_clean_error(refused, "cli-iris-absent")

        # describe lists the hosted models with their versions, memory and readiness.
        described = cli("describe", NAME, "--output", "json")
        assert described.exit_code == 0, described.stderr
        hosted = {m["name"]: m for m in json.loads(described.stdout)["models"]}
        assert set(hosted) == {"cli-east", "cli-west", "cli-north"}
        assert hosted["cli-north"]["memory"] == "48Mi" and hosted["cli-north"]["ready"] is True
        assert hosted["cli-west"]["version"] == "1.0.0"
        table = cli("describe", NAME)
        assert table.exit_code == 0, table.stderr
        assert "models" in table.stdout and "cli-north" in table.stdout and "48Mi" in table.stdout

        unloaded = cli("models", "unload", NAME, "cli-west")
        assert unloaded.exit_code == 0, unloaded.stderr
        gone = cli("predict", NAME, "--model", "cli-west", "--data", json.dumps(ROWS))
        assert_clean_error(gone, "cli-west")
        assert_clean_error(cli("models", "unload", NAME, "cli-west"),
                           "hosts no model named 'cli-west'")
        east_answer = cli("predict", NAME, "--model", "cli-east", "--data", json.dumps(ROWS))
        assert json.loads(east_answer.stdout)["predictions"] == east[1].predict(
            np.array(ROWS)).tolist()
    finally:
        stop_quietly(NAME)


def test_models_still_lists_recorded_artifacts(cli, regional):
    listed = cli("models", "cli-east", "--output", "json")
    assert listed.exit_code == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)] == ["cli-east"]
    every = cli("models", "--kind", "model", "--output", "json")
    assert {"cli-east", "cli-west", "cli-north"} <= {r["name"] for r in json.loads(every.stdout)}


def test_multi_usage_errors_name_the_fix(cli, regional):
    assert_clean_error(cli("serve", "1", "2"), "serve takes one MODEL", "--multi NAME")
    assert_clean_error(cli("serve", "--multi", NAME, "1", "--name", "x"), "--multi")
    assert_clean_error(cli("serve", "--multi", "Bad_Name", "1"), "Bad_Name")
