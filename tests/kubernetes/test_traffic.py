"""Canary traffic, promote and rollback on the Kubernetes backend, against the API double.

The double plays KServe's controller: a new pod template cuts a new revision, a canary splits
traffic between the latest ready and the latest rolled-out revision, and a revision that takes
100 % becomes the rolled-out one (status.components.predictor.traffic and *RolledoutRevision).
"""

from __future__ import annotations

import pytest

from kfp_serve.serving.backends.kubernetes import InferenceServiceNotReadyError
from kfp_serve.serving.backends.traffic import rollout_state
from kfp_serve.serving.errors import ServingError
from tests.kube_double import ISVC
from tests.kube_double.manifests import isvc_manifest

V1, V2 = "iris-predictor-00001", "iris-predictor-00002"


def _model(version: str, canary: int | None = None) -> dict:
    manifest = isvc_manifest(storage_uri=f"gs://kfp-serve-test/iris-{version}")
    if canary is not None:
        manifest["spec"]["predictor"]["canaryTrafficPercent"] = canary
    return manifest


@pytest.fixture
def canary(backend):
    """v1 rolled out, then v2 served as a 20 % canary."""
    backend.apply(_model("v1"), timeout=10)
    backend.apply(_model("v2", canary=20), timeout=10)
    return backend


def test_a_canary_splits_traffic_between_new_and_stable(canary, kube_double):
    state = canary.rollout_state("iris")
    assert state.traffic == {V2: 20, V1: 80}
    assert (state.latest_created, state.latest_rolled_out) == (V2, V1)
    # The printer columns of the real CRD read these tags.
    targets = kube_double.get(ISVC, "iris")["status"]["components"]["predictor"]["traffic"]
    assert {t["tag"]: t["percent"] for t in targets} == {"latest": 20, "prev": 80}


def test_traffic_moves_without_a_new_revision(canary):
    state = canary.set_traffic("iris", 50, timeout=10)
    assert state.traffic == {V2: 50, V1: 50}
    assert state.latest_created == V2  # changing the split alone cuts no revision


def test_promote_gives_the_latest_revision_everything(canary, kube_double):
    state = canary.promote("iris", timeout=10)
    assert state.traffic == {V2: 100}
    assert (state.latest_rolled_out, state.previous_rolled_out) == (V2, V1)
    assert "canaryTrafficPercent" not in kube_double.get(ISVC, "iris")["spec"]["predictor"]


def test_rollback_sends_everything_to_the_stable_revision(canary, kube_double):
    state = canary.rollback("iris", timeout=10)
    assert state.traffic == {V2: 0, V1: 100}  # KServe keeps listing the canary, at 0 %
    assert state.latest_rolled_out == V1 and state.latest_created == V2
    assert kube_double.get(ISVC, "iris")["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # The model being rolled out is still the one in the spec: promoting it again works.
    assert canary.promote("iris", timeout=10).traffic == {V2: 100}



def test_a_conflicting_write_is_planned_again_and_a_storm_of_them_reported(canary, kube_double):
    before = len(kube_double.calls_matching(verb="patch"))
    kube_double.faults.add(verb="patch", status=409, reason="Conflict", times=1)
    assert canary.set_traffic("iris", 50, timeout=10).traffic == {V2: 50, V1: 50}
    assert len(kube_double.calls_matching(verb="patch")) == before + 2
    kube_double.faults.add(verb="patch", status=409, reason="Conflict", times=None)
    with pytest.raises(ServingError, match=r"kept changing during promote \(5 conflicts\)"):
        canary.promote("iris", timeout=10)
    assert len(kube_double.calls_matching(verb="patch")) == before + 2 + 5

def test_rollback_while_the_new_revision_is_not_ready(backend, kube_double):
    backend.apply(_model("v1"), timeout=10)
    kube_double.kserve.program("iris", outcome="fail", delay=0.05)
    with pytest.raises(InferenceServiceNotReadyError):
        backend.apply(_model("v2", canary=20), timeout=10)
    failing = backend.rollout_state("iris")
    # Knative routes "latest" to the last Ready revision: v1 still answers everything.
    assert (failing.latest_created, failing.latest_ready, failing.traffic) == (V2, V1, {V1: 100})

    state = backend.rollback("iris", timeout=10)
    assert state.traffic == {V1: 100} and state.canary_percent == 0
    with pytest.raises(ServingError, match=r"traffic did not move .* iris-predictor-00002"):
        backend.promote("iris", timeout=0.5)


def test_promote_without_a_canary_says_so(backend):
    backend.apply(_model("v1"), timeout=10)
    with pytest.raises(ServingError, match=r"no canary to promote: spec.predictor."
                                           r"canaryTrafficPercent is not set"):
        backend.promote("iris", timeout=5)


def test_rollback_without_a_previous_revision_says_so(backend):
    backend.apply(_model("v1", canary=10), timeout=10)
    assert backend.rollout_state("iris").traffic == {V1: 100}  # nothing to split with
    with pytest.raises(ServingError, match="no previous revision to roll back to"):
        backend.rollback("iris", timeout=5)


def test_rollback_after_promote_points_at_serving_the_old_model(canary):
    canary.promote("iris", timeout=10)
    with pytest.raises(ServingError, match=f"To go back to {V1}, serve its model again"):
        canary.rollback("iris", timeout=5)


@pytest.mark.parametrize("percent", [-1, 101, 20.5, True, "20"])
def test_traffic_percent_must_be_0_to_100(canary, percent):
    with pytest.raises(ServingError, match="traffic percent must be an int from 0 to 100"):
        canary.set_traffic("iris", percent, timeout=5)


def test_state_of_an_object_never_reconciled():
    state = rollout_state(isvc_manifest() | {"metadata": {"name": "iris", "generation": 1}})
    assert state.traffic == {} and not state.canary_in_progress


def test_a_new_transformer_alone_is_rolled_back(backend):
    def with_transformer(image: str, canary: int | None = None) -> dict:
        manifest = _model("v1")
        manifest["spec"]["transformer"] = {
            "containers": [{"name": "kserve-container", "image": image}]}
        if canary is not None:
            manifest["spec"]["predictor"]["canaryTrafficPercent"] = canary
            manifest["spec"]["transformer"]["canaryTrafficPercent"] = canary
        return manifest

    backend.apply(with_transformer("example.org/scaler:1"), timeout=10)
    backend.apply(with_transformer("example.org/scaler:2", canary=30), timeout=10)
    assert rollout_state(backend.get("iris").manifest, "transformer").traffic == {
        "iris-transformer-00002": 30, "iris-transformer-00001": 70}
    backend.rollback("iris", timeout=10)
    after = backend.get("iris").manifest
    assert rollout_state(after, "transformer").traffic == {
        "iris-transformer-00002": 0, "iris-transformer-00001": 100}
    assert rollout_state(after).traffic == {V1: 100}  # the unchanged predictor keeps serving
