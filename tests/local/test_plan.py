"""The local backend's plan: manifest -> what to run, checked on plain dicts (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kfp_serve.serving.backends.local.plan import plan_manifest, split_traffic
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime.dataplane import DATAPLANE_ENV
from tests.local.conftest import make_manifest


@pytest.mark.parametrize(
    ("stable", "new", "canary", "traffic"),
    [
        pytest.param(None, 1, None, {"1": 100}, id="first-revision"),
        pytest.param(1, 2, None, {"2": 100}, id="plain-rollout"),
        pytest.param(1, 2, 100, {"2": 100}, id="canary-promoted"),
        pytest.param(1, 2, 20, {"1": 80, "2": 20}, id="canary-20"),
        pytest.param(1, 2, 0, {"1": 100, "2": 0}, id="canary-0-keeps-running"),
        pytest.param(None, 2, 20, {"2": 100}, id="stable-exited"),
        pytest.param(2, 2, 20, {"2": 100}, id="only-traffic-on-itself"),
    ],
)
def test_split_traffic(stable: int | None, new: int, canary: int | None, traffic: dict) -> None:
    assert split_traffic(stable, new, canary) == traffic


def test_the_manifest_never_chooses_where_a_server_listens(tmp_path: Path) -> None:
    manifest = make_manifest(
        "iris", tmp_path,
        env=[{"name": "KFP_SERVE_HTTP_HOST", "value": "0.0.0.0"},
             {"name": "HTTP_HOST", "value": "0.0.0.0"},
             {"name": "PREDICT_PROBA", "value": "true"}],
    )
    plan = plan_manifest(manifest)
    env = dict(plan.predictor.server_env)
    env.pop(DATAPLANE_ENV)  # the runtime the manifest names, for the data plane's fidelity
    assert env == {"PREDICT_PROBA": "true"}


def test_a_spec_change_is_a_new_revision_a_canary_change_is_not(tmp_path: Path) -> None:
    base = plan_manifest(make_manifest("iris", tmp_path))
    canary = plan_manifest(make_manifest("iris", tmp_path, canary=30))
    other = plan_manifest(make_manifest("iris", tmp_path / "other"))
    assert canary.spec_hash == base.spec_hash and canary.canary_percent == 30
    assert other.spec_hash != base.spec_hash


@pytest.mark.parametrize("percent", [-1, 101, "50", 2.5])
def test_bad_canary_percent_names_the_field(tmp_path: Path, percent: object) -> None:
    manifest = make_manifest("iris", tmp_path)
    manifest["spec"]["predictor"]["canaryTrafficPercent"] = percent
    with pytest.raises(ServingError, match="canaryTrafficPercent"):
        plan_manifest(manifest)
