"""``kfp-serve run`` through the console script, as a user re-runs it (~2 min in all).

One pipeline lives through the module: the first run, the identical re-run that reuses what it
recorded, the changed run that is refused, and ``--new-version``; then the endpoint it left is
looked at (``models``, ``logs``) and stopped (``stop --all``).
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cli.conftest import Outcome, assert_clean_error, last_error, run_script, stop_quietly

SUFFIX = uuid.uuid4().hex[:6]
MODEL = f"cli-run-model-{SUFFIX}"
ENDPOINT = f"cli-run-{SUFFIX}"
#: Small trees: the run is about the CLI, not the model.
BASE = ["-p", f"model_name={MODEL}", "-p", f"endpoint_name={ENDPOINT}",
        "-p", 'hyperparameters={"n_estimators": 10}']


def summary_of(outcome: Outcome) -> dict[str, str]:
    """The two-column run summary table as a dict."""
    summary = {}
    for line in outcome.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2:
            summary[cells[0]] = cells[1]
    return summary


@pytest.fixture(scope="module")
def first_run() -> Outcome:
    outcome = run_script("run", "xgboost", *BASE, timeout=300)
    assert outcome.exit_code == 0, outcome.stderr[-3000:]
    yield outcome
    stop_quietly(ENDPOINT)


def test_first_run_serves_and_shows_progress_and_metrics(first_run):
    from kfp_serve.serving.endpoint import Endpoint

    summary = summary_of(first_run)
    url = Endpoint(ENDPOINT).url
    assert summary["endpoint_url"] == url and url.startswith("http://127.0.0.1:")
    assert summary["endpoint_name"] == ENDPOINT
    assert summary["smoke_verdict"] == "blessed"
    assert summary["model_version"] == "1.0.0"
    assert 0.8 < float(summary["metric accuracy"]) <= 1.0
    assert "metric f1_macro" in summary
    # Live progress, one line per step start and finish, went to stderr; validate runs first.
    assert first_run.stderr.index("▶ validate …") < first_run.stderr.index("▶ train …")
    for step in ("validate", "train", "submit-model", "snapshot-model", "serve", "smoke-predict"):
        assert f"✓ {step} (success" in first_run.stderr
        assert f"step {step}" in summary


def test_identical_rerun_reuses_the_recorded_model(first_run):
    again = run_script("run", "xgboost", *BASE, "--output", "json", timeout=300)
    assert again.exit_code == 0, again.stderr[-3000:]
    result = json.loads(again.stdout)
    assert result["model_id"] == int(summary_of(first_run)["model_id"])
    assert result["blessed"] is True


def test_changed_content_under_the_same_version_is_refused_with_the_fix(first_run):
    changed = run_script("run", "xgboost", *BASE, "-p", "random_state=7", timeout=300)
    error, hint = last_error(changed)
    assert "step 'submit-model' failed" in error
    assert f"model '{MODEL}' version '1.0.0' already exists with different content" in error
    assert "--param model_version=1.0.1" in hint and "--new-version" in hint
    assert "allow_overwrite" not in error + hint


def test_new_version_records_the_next_patch_version_only_for_new_content(first_run):
    first_id = int(summary_of(first_run)["model_id"])
    same = run_script("run", "xgboost", *BASE, "--new-version", "-o", "json", timeout=300)
    assert same.exit_code == 0, same.stderr[-3000:]
    assert json.loads(same.stdout)["model_id"] == first_id  # identical content: reused
    bumped = run_script("run", "xgboost", *BASE, "-p", "random_state=7", "--new-version",
                        "-o", "json", timeout=300)
    assert bumped.exit_code == 0, bumped.stderr[-3000:]
    new_id = json.loads(bumped.stdout)["model_id"]
    assert json.loads(bumped.stdout)["model_version"] == "1.0.1"
    # The same changed run again: identical to 1.0.1, the latest, so no 1.0.2.
    again = run_script("run", "xgboost", *BASE, "-p", "random_state=7", "--new-version",
                       "-o", "json", timeout=300)
    assert again.exit_code == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["model_id"] == new_id
    listed = run_script("models", MODEL, "--output", "json", timeout=60)
    assert listed.exit_code == 0, listed.stderr
    rows = {row["version"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"1.0.0", "1.0.1"}
    assert rows["1.0.1"]["id"] == new_id and new_id != first_id
    for row in rows.values():
        assert row["framework"] == "xgboost" and row["name"] == MODEL
        assert row["created"][:2] == "20" and float(row["metrics"]["accuracy"]) > 0.8


def test_a_bad_serve_config_stops_the_run_before_anything_is_recorded():
    name = f"cli-never-{SUFFIX}"
    outcome = run_script("run", "xgboost", "-p", f"model_name={name}",
                         "-p", 'serve_config={"limit": {"memory": "1Gi"}}', timeout=120)
    assert_clean_error(outcome, "limit: unknown ServeConfig field", "did you mean 'limits'?")
    assert_clean_error(run_script("models", name, timeout=60),
                       f"no model or transformer named {name!r}")


def test_logs_show_the_predictor_of_the_endpoint(first_run):
    outcome = run_script("logs", ENDPOINT, "--component", "predictor", timeout=60)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.strip(), "the predictor's log is empty"
    everything = run_script("logs", ENDPOINT, timeout=60)
    assert "[predictor] " in everything.stdout and "[router] " in everything.stdout


def test_lineage_shows_the_train_step_with_dataset_and_metrics(first_run, tmp_path):
    model_id = summary_of(first_run)["model_id"]
    png = tmp_path / "lineage.png"
    outcome = run_script("lineage", model_id, "--png", str(png), timeout=120)
    assert outcome.exit_code == 0, outcome.stderr
    rows = {line.split("│")[1].strip(): line for line in outcome.stdout.splitlines()
            if line.startswith("│")}
    assert "dataset breast_cancer" in rows["trained on"] and "accuracy=" in rows["trained on"]
    assert "default" in rows["experiment"]
    assert png.stat().st_size > 10_000
    as_json = json.loads(run_script("lineage", model_id, "-o", "json", timeout=60).stdout)
    assert as_json["artifact"]["name"] == MODEL and as_json["experiment"] == "default"


def test_stop_all_then_ignore_missing(first_run):
    stopped = run_script("stop", "--all", timeout=120)
    assert stopped.exit_code == 0, stopped.stderr
    assert f"stopped '{ENDPOINT}'" in stopped.stdout
    listed = run_script("endpoints", "-o", "json", timeout=60)
    assert json.loads(listed.stdout) == []
    from kfp_serve.serving.runtime import warm_pool

    assert not warm_pool.socket_path().exists(), "the last endpoint went, the pool stayed"
    again = run_script("stop", ENDPOINT, "--ignore-missing", timeout=60)
    assert again.exit_code == 0, again.stderr
    assert "nothing to stop" in again.stdout

