"""set_traffic / promote / rollback on real local endpoints: KServe's canary semantics, checked
by where real requests go."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from kfp_serve.serving.backends.local import LocalBackend
from kfp_serve.serving.backends.local.registry import read_record
from kfp_serve.serving.backends.local.supervisor import start_time
from kfp_serve.serving.endpoint import Endpoint
from kfp_serve.serving.errors import ServingError
from tests.local.conftest import make_manifest
from tests.local.test_local_endpoints import _wait_gone

ROW = [[5.1, 3.5, 1.4, 0.2]]


def new_answers(ep: Endpoint, n: int) -> int:
    """How many of ``n`` requests the shifted model (classes >= 10) answered."""
    return sum(1 for _ in range(n) if ep.predictions(ROW)[0] >= 10)


def test_canary_traffic_promote_rollback(
    backend: LocalBackend, model_dir: Any, shifted_model_dir: Any
) -> None:
    name = "iris-delivery"
    backend.apply(make_manifest(name, model_dir[0]), timeout=90)
    backend.apply(make_manifest(name, shifted_model_dir[0], canary=20), timeout=90)
    ep = Endpoint(name, backend=backend)
    try:
        state = backend.rollout_state(name)
        assert state.latest_created == f"{name}-predictor-00002"
        assert state.latest_rolled_out == f"{name}-predictor-00001"
        assert state.canary_percent == 20 and state.canary_in_progress
        assert state.traffic == {f"{name}-predictor-00001": 80, f"{name}-predictor-00002": 20}
        # Binomial(200, 0.2): mean 40, sd 5.7; 15..65 is +-4.4 sd (fails by chance ~1 in 10^5).
        assert 15 <= new_answers(ep, 200) <= 65

        state = backend.set_traffic(name, 50)
        assert state.percent(f"{name}-predictor-00002") == 50
        assert read_record(name).traffic == {"1": 50, "2": 50}

        # Rollback: the stable revision takes everything; the canary keeps running, idle.
        canary_pid = read_record(name).latest.predictor.pid
        state = backend.rollback(name)
        assert state.traffic == {f"{name}-predictor-00001": 100, f"{name}-predictor-00002": 0}
        assert state.canary_percent == 0
        assert new_answers(ep, 50) == 0
        assert start_time(canary_pid) is not None

        # KServe's promote after a rollback: the field is removed, the latest revision wins.
        old_pid = read_record(name).revision(1).predictor.pid
        state = backend.promote(name)
        assert state.traffic == {f"{name}-predictor-00002": 100}
        assert state.canary_percent is None and not state.canary_in_progress
        assert state.latest_rolled_out == f"{name}-predictor-00002"
        assert state.previous_rolled_out == f"{name}-predictor-00001"
        assert new_answers(ep, 50) == 50
        assert _wait_gone(old_pid)
        record = read_record(name)
        assert [r.revision for r in record.revisions] == [2]
        assert "canaryTrafficPercent" not in record.latest.manifest["spec"]["predictor"]
        assert [e["action"] for e in record.events] == [
            "serve", "serve", "traffic", "rollback", "promote"
        ]

        with pytest.raises(ServingError, match="no canary to promote"):
            backend.promote(name)
        with pytest.raises(ServingError, match="no canary to roll back.*revision 1 was stopped"):
            backend.rollback(name)
    finally:
        ep.close()
        backend.delete(name)


def test_first_revision_has_nothing_to_promote_or_roll_back(
    backend: LocalBackend, model_dir: Any
) -> None:
    name = "iris-single"
    backend.apply(make_manifest(name, model_dir[0]), timeout=90)
    try:
        with pytest.raises(ServingError, match="no previous revision to roll back to"):
            backend.rollback(name)
        with pytest.raises(ServingError, match="no canary to promote"):
            backend.promote(name)
        with pytest.raises(ServingError, match="int from 0 to 100, got 120"):
            backend.set_traffic(name, 120)
        # Traffic on a lone revision sets the field, as on a cluster; it keeps all requests.
        state = backend.set_traffic(name, 30)
        assert state.canary_percent == 30
        assert state.traffic == {f"{name}-predictor-00001": 100}
    finally:
        backend.delete(name)
    with pytest.raises(ServingError, match="no local endpoint named 'iris-single'"):
        backend.promote(name)


def test_rollback_while_the_canary_is_down(
    backend: LocalBackend, model_dir: Any, shifted_model_dir: Any
) -> None:
    name = "iris-crashed-canary"
    backend.apply(make_manifest(name, model_dir[0]), timeout=90)
    backend.apply(make_manifest(name, shifted_model_dir[0], canary=30), timeout=90)
    try:
        canary = read_record(name).latest.predictor.pid  # started by this test's apply
        os.kill(canary, signal.SIGKILL)
        assert _wait_gone(canary)
        with pytest.raises(ServingError, match="latest revision 2 no longer runs"):
            backend.set_traffic(name, 50)
        state = backend.rollback(name)
        assert state.traffic[f"{name}-predictor-00001"] == 100
        assert state.latest_ready == f"{name}-predictor-00001"
        with Endpoint(name, backend=backend) as ep:
            assert new_answers(ep, 20) == 0
    finally:
        backend.delete(name)
