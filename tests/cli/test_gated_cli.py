"""``kfp-serve rollout NAME MODEL --gate FILE``: a gated rollout from the command line, on a
real local endpoint; bad gates are refused before anything is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import assert_clean_error

GATE = """\
offline:
  accuracy: {min: 0.8, max_change: 0.05}
canary: 30
live: {window_requests: 100, window_seconds: 120, max_p99_ratio: 20, min_agreement: 0.9}
"""


@pytest.fixture()
def gate_file(tmp_path: Path) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(GATE)
    return path


def test_a_gate_naming_an_unknown_metric_is_refused_before_anything_is_served(
    cli: Any, tmp_path: Path, iris_model: Any
) -> None:
    from kfp_serve.serving.backends.local import registry

    bad = tmp_path / "bad.yaml"
    bad.write_text("offline:\n  precision: {min: 0.9}\n")
    outcome = cli("rollout", "never-gated", "cli-iris:1.0.0", "--gate", str(bad))
    assert_clean_error(outcome, "'precision'", "accuracy, log_loss, auc, rmse")
    bad.write_text("offline:\n  accuracy: {min: 0.9, max: 0.5}\n")
    assert_clean_error(cli("rollout", "never-gated", "cli-iris:1.0.0", "--gate", str(bad)),
                       "min 0.9 is above max 0.5")
    assert not registry.exists("never-gated")


def test_rollout_needs_a_canary_or_a_gate(cli: Any, iris_model: Any) -> None:
    assert_clean_error(cli("rollout", "never-gated", "cli-iris:1.0.0"), "--canary", "--gate")


def test_a_gated_rollout_promotes_a_better_candidate_and_refuses_a_worse_one(
    cli: Any, gate_file: Path, iris: Any
) -> None:
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts

    # A model of its own: the alias this test moves must not meet the other CLI tests.
    x, y = iris
    model = "cli-gated-iris"
    model_id = artifacts.Model(model=LogisticRegression(max_iter=1000).fit(x, y), name=model,
                               version="1.0.0").submit_artifact()
    assert cli("serve", str(model_id), "--name", "cli-gated").exit_code == 0
    artifacts.Model(model=LogisticRegression(C=5, max_iter=1000).fit(x, y), name=model,
                    version="1.1.0").submit_artifact()
    outcome = cli("rollout", "cli-gated", f"{model}:1.1.0", "--gate", str(gate_file),
                  "--replay")
    assert outcome.exit_code == 0, outcome
    # No alias yet: the champion is what the endpoint served.
    assert "**promoted**" in outcome.stdout and f"champion: {model}:1.0.0" in outcome.stdout
    assert "| agreement |" in outcome.stdout
    assert artifacts.list_aliases(model) == {"champion": "1.1.0"}

    artifacts.Model(model=DummyClassifier().fit(x, y), name=model,
                    version="1.2.0").submit_artifact()
    outcome = cli("rollout", "cli-gated", f"{model}:1.2.0", "--gate", str(gate_file),
                  "--output", "json")
    assert outcome.exit_code == 1
    assert '"decision": "rejected offline"' in outcome.stdout
    assert artifacts.list_aliases(model) == {"champion": "1.1.0"}
    assert cli("stop", "cli-gated").exit_code == 0
