"""serve → endpoints → predict/explain → lineage → stop, through the CLI, on real local servers."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from tests.cli.conftest import assert_clean_error, stop_quietly

NAME = "cli-iris"
DOOMED = "cli-doomed"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def _table_row(stdout: str, first_cell: str) -> list[str]:
    """The cells of the rich table row whose first cell is ``first_cell``."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{stdout}")


def _reason_text(stdout: str) -> str:
    """The last column of the table's body rows, joined (it wraps over several lines)."""
    cells = [line.strip().strip("│").split("│")[-1].strip()
             for line in stdout.splitlines() if line.startswith("│")]
    return " ".join(c for c in cells if c)


@pytest.fixture(scope="module")
def served(cli, iris_model):
    """``kfp-serve serve MODEL_ID --name cli-iris`` (a real local endpoint), stopped after."""
    model_id, _ = iris_model
    outcome = cli("serve", str(model_id), "--name", NAME, "--timeout", "120")
    assert outcome.exit_code == 0, outcome.stderr
    yield model_id, outcome
    stop_quietly(NAME)


def test_serve_dry_run_prints_the_manifest_as_yaml_or_json(cli, iris_model):
    import yaml

    model_id, _ = iris_model
    argv = ["serve", str(model_id), "--name", "cli-dry", "--dry-run",
            "--config", '{"labels": {"team": "ml"}, "limits": {"memory": "1Gi"}}']
    outcome = cli(*argv)
    assert outcome.exit_code == 0, outcome.stderr
    # YAML by default, as Kubernetes users read manifests; JSON when asked for.
    assert outcome.stdout.startswith("apiVersion: serving.kserve.io/")
    manifest = yaml.safe_load(outcome.stdout)
    as_json = cli(*argv, "--output", "json")
    assert json.loads(as_json.stdout) == manifest
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "cli-dry"
    labels = manifest["metadata"]["labels"]
    assert labels["team"] == "ml"
    assert labels["kfp-serve.kubeflow.org/model-id"] == str(model_id)
    model = manifest["spec"]["predictor"]["model"]
    assert model["storageUri"].startswith("file://")
    assert model["resources"]["limits"]["memory"] == "1Gi"
    # Nothing was applied.
    assert "cli-dry" not in cli("endpoints").stdout


def test_serve_reports_the_ready_url(served):
    _, outcome = served
    assert f"endpoint '{NAME}' is ready at http://127.0.0.1:" in outcome.stdout


def test_endpoints_lists_url_model_id_and_health(cli, served):
    from kfp_serve.serving.endpoint import Endpoint

    model_id, _ = served
    cells = _table_row(cli("endpoints").stdout, NAME)
    assert cells[1] == Endpoint(NAME).url
    assert cells[2] == "ready"
    assert cells[3] == "cli-iris 1.0.0 (100 %)"
    assert cells[4] == str(model_id)
    assert cells[5] == "-"  # no transformer


def test_predict_inline_and_from_file_match_in_process(cli, served, iris_model, tmp_path):
    from kfp_serve.serving.endpoint import Endpoint

    _, est = iris_model
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(ROWS))
    inline = cli("predict", NAME, "--data", json.dumps(ROWS))
    from_file = cli("predict", NAME, "--data", f"@{rows_file}")
    assert inline.exit_code == 0 and from_file.exit_code == 0, inline.stderr + from_file.stderr
    answer = json.loads(inline.stdout)
    assert answer == json.loads(from_file.stdout)
    assert answer == Endpoint(NAME).predict(ROWS)
    assert answer["predictions"] == est.predict(np.array(ROWS)).tolist()


def test_explain_gives_linear_attributions(cli, served, iris_model):
    _, est = iris_model
    outcome = cli("explain", NAME, "--data", json.dumps(ROWS))
    assert outcome.exit_code == 0, outcome.stderr
    answer = json.loads(outcome.stdout)
    assert answer["method"] == "linear"
    explanations = answer["explanations"]
    assert [e["output"] for e in explanations] == est.classes_.tolist()
    margins = est.decision_function(np.array(ROWS))
    for k, explanation in enumerate(explanations):
        attributions = np.array(explanation["attributions"])
        assert attributions.shape == (len(ROWS), 4)
        # Attributions plus the base value add up to the model's own margin for the class.
        np.testing.assert_allclose(attributions.sum(axis=1) + explanation["base_value"],
                                   margins[:, k], rtol=1e-6, atol=1e-9)


def test_models_lists_submitted_artifacts(cli, iris_model, iris_scaler):
    model_id, _ = iris_model
    everything = cli("models")
    assert everything.exit_code == 0, everything.stderr
    model_row = _table_row(everything.stdout, str(model_id))
    assert model_row[1:5] == ["model", "cli-iris", "1.0.0", "sklearn"]
    assert model_row[5][:2] == "20"  # created, as a date
    assert model_row[7] == "cli-tests"
    scaler_row = _table_row(everything.stdout, str(iris_scaler))
    assert scaler_row[1:4] == ["transformer", "cli-scaler", "1.0.0"]
    only_transformers = cli("models", "--kind", "transformer").stdout
    assert "cli-scaler" in only_transformers and "cli-iris" not in only_transformers
    by_name = json.loads(cli("models", "cli-iris", "--output", "json").stdout)
    assert [(r["id"], r["name"], r["version"]) for r in by_name] == [(model_id, "cli-iris",
                                                                      "1.0.0")]


def test_serving_a_transformer_as_model_is_a_clean_error(cli, iris_scaler):
    assert_clean_error(cli("serve", str(iris_scaler), "--dry-run"),
                       "is a transformer, not a model")


def test_lineage_table_and_png(cli, served, tmp_path):
    import matplotlib.image

    model_id, _ = served
    png = tmp_path / "graph" / "lineage.png"
    outcome = cli("lineage", str(model_id), "--png", str(png))
    assert outcome.exit_code == 0, outcome.stderr
    assert _table_row(outcome.stdout, "artifact")[1:3] == ["model cli-iris 1.0.0", str(model_id)]
    assert _table_row(outcome.stdout, "snapshot")[1].startswith("file://")
    served_by = _table_row(outcome.stdout, "served by")
    assert served_by[1].startswith(f"{NAME} 100 % from ") and served_by[1].endswith(" to now")
    assert served_by[3].startswith("http://127.0.0.1:")
    assert f"wrote {png}" in outcome.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    image = matplotlib.image.imread(png)
    height, width = image.shape[:2]
    assert width > 600 and height > 150


def test_a_killed_endpoint_shows_as_dead(cli, iris_model):
    from kfp_serve.serving.backends.local.registry import read_record

    model_id, _ = iris_model
    try:
        assert cli("serve", str(model_id), "--name", DOOMED, "--timeout", "120").exit_code == 0
        pid = read_record(DOOMED).latest.predictor.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            cells = _table_row(cli("endpoints").stdout, DOOMED)
            if cells[2] == "dead" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert cells[2] == "dead"
        # The reason names the dead process and how to clean up.
        reason = _reason_text(cli("endpoints").stdout)
        assert f"(pid {pid}) has exited" in reason
        assert f"`kfp-serve stop {DOOMED}` to clean up" in reason
        assert_clean_error(cli("predict", DOOMED, "--data", json.dumps(ROWS)), "not running")
        stopped = cli("stop", DOOMED)
        assert stopped.exit_code == 0, stopped.stderr
    finally:
        stop_quietly(DOOMED)


def test_stop_removes_the_endpoint(cli, served):
    from kfp_serve.serving.backends.local.registry import read_record

    pids = [p.pid for p in read_record(NAME).latest.processes]
    outcome = cli("stop", NAME)
    assert outcome.exit_code == 0, outcome.stderr
    assert f"stopped '{NAME}'" in outcome.stdout
    assert NAME not in cli("endpoints").stdout
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
    assert_clean_error(cli("predict", NAME, "--data", json.dumps(ROWS)),
                       f"no local endpoint named '{NAME}'")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
