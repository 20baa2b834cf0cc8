"""``kfp-serve run``: one real pipeline run end to end through the console script (~30 s)."""

from __future__ import annotations

import uuid

from tests.cli.conftest import run_script, stop_quietly


def test_run_xgboost_end_to_end_prints_url_and_blessed_verdict():
    from kfp_serve.serving.endpoint import Endpoint

    name = f"cli-run-{uuid.uuid4().hex[:8]}"
    try:
        outcome = run_script(
            "run", "xgboost", "--param", f"endpoint_name={name}",
            "--param", 'hyperparameters={"n_estimators": 10}', "-p", "model_version=9.9.9",
            timeout=300,
        )
        assert outcome.exit_code == 0, outcome.stderr[-3000:]
        summary = {}
        for line in outcome.stdout.splitlines():
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if len(cells) == 2:
                summary[cells[0]] = cells[1]
        url = Endpoint(name).url
        assert summary["endpoint_url"] == url and url.startswith("http://127.0.0.1:")
        assert summary["endpoint_name"] == name
        assert summary["smoke_verdict"] == "blessed"
        assert summary["blessed"] == "True"
        assert summary["model_id"].isdigit()
        # Live progress, one line per step start and finish, went to stderr.
        for step in ("train", "submit-model", "snapshot-model", "serve", "smoke-predict"):
            assert f"▶ {step} …" in outcome.stderr
            assert f"✓ {step} (success" in outcome.stderr
            assert f"step {step}" in summary
        # The endpoint the run left behind serves, and the CLI stops it.
        assert Endpoint(name).ready()
        stopped = run_script("stop", name, timeout=60)
        assert stopped.exit_code == 0, stopped.stderr
    finally:
        stop_quietly(name)
