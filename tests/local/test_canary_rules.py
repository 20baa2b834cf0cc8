"""KServe's canary rules over a local registry record, on plain records (no processes): the
cases the end-to-end tests cannot stage cheaply."""

from __future__ import annotations

import pytest

from kfp_serve.serving.backends.local import canary
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
)
from kfp_serve.serving.backends.traffic import PROMOTE, ROLLBACK, TRAFFIC
from kfp_serve.serving.errors import ServingError


def _rev(number: int, version: str, canary_percent: int | None = None) -> RevisionRecord:
    predictor: dict = {"model": {"storageUri": f"file:///m/{version}"}}
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    return RevisionRecord(
        revision=number, created="t", manifest={"spec": {"predictor": predictor}},
        spec_hash=version, protocol="v1", model_name="iris",
        predictor=ProcessRecord("predictor", 2**22 + number, 1, 5000 + number, "p.log", "iris"),
        model_ids={"model": str(number), "model_name": "iris", "model_version": version},
    )


def _record(traffic: dict[str, int], revisions: list[RevisionRecord],
            rolled_out: list[int]) -> EndpointRecord:
    return EndpointRecord(
        name="iris", created="t", updated="t",
        router=ProcessRecord("router", 2**22, 1, 4000, "r.log"), revisions=revisions,
        traffic=traffic, rolled_out=rolled_out,
    )


def _canary() -> EndpointRecord:
    return _record({"1": 80, "2": 20}, [_rev(1, "1.0.0"), _rev(2, "2.0.0", 20)], [1])


def everyone(rev: RevisionRecord) -> bool:
    return True


def test_traffic_splits_between_latest_and_stable() -> None:
    move = canary.plan_move(_canary(), TRAFFIC, everyone, 35)
    assert (move.traffic, move.canary_percent) == ({"1": 65, "2": 35}, 35)
    assert move.message == "revision 2 (iris 2.0.0) gets 35 %, revision 1 (iris 1.0.0) 65 %"
    assert canary.plan_move(_canary(), TRAFFIC, everyone, 100).traffic == {"2": 100}
    for bad in (-1, 101, 2.5, True, "20"):
        with pytest.raises(ServingError, match="int from 0 to 100"):
            canary.plan_move(_canary(), TRAFFIC, everyone, bad)


def test_a_zero_share_needs_no_running_canary_but_a_positive_one_does() -> None:
    def stable_only(rev: RevisionRecord) -> bool:
        return rev.revision == 1

    assert canary.plan_move(_canary(), TRAFFIC, stable_only, 0).traffic == {"1": 100, "2": 0}
    assert canary.plan_move(_canary(), ROLLBACK, stable_only).traffic == {"1": 100, "2": 0}
    with pytest.raises(ServingError, match="latest revision 2 no longer runs"):
        canary.plan_move(_canary(), PROMOTE, stable_only)


def test_rollback_needs_a_running_stable_revision() -> None:
    def canary_only(rev: RevisionRecord) -> bool:
        return rev.revision == 2

    with pytest.raises(ServingError, match="stable revision 1 no longer runs"):
        canary.plan_move(_canary(), ROLLBACK, canary_only)
    # Moving traffic to a canary whose stable revision died gives the canary everything.
    assert canary.plan_move(_canary(), TRAFFIC, canary_only, 30).traffic == {"2": 100}


def test_state_reads_like_kserve_status() -> None:
    state = canary.rollout_state(_canary(), everyone)
    assert state.traffic == {"iris-predictor-00001": 80, "iris-predictor-00002": 20}
    assert (state.latest_created, state.latest_rolled_out, state.previous_rolled_out) == (
        "iris-predictor-00002", "iris-predictor-00001", None
    )
    assert state.canary_in_progress and state.canary_percent == 20
    promoted = _record({"2": 100}, [_rev(2, "2.0.0")], [1, 2])
    state = canary.rollout_state(promoted, everyone)
    assert (state.latest_rolled_out, state.previous_rolled_out) == (
        "iris-predictor-00002", "iris-predictor-00001"
    )
    with pytest.raises(ServingError, match="no canary to roll back.*revision 1 was stopped"):
        canary.plan_move(promoted, ROLLBACK, everyone)


def test_a_record_written_before_rolled_out_revisions_were_kept() -> None:
    legacy = _record({"1": 75, "2": 25}, [_rev(1, "1.0.0"), _rev(2, "2.0.0", 25)], [])
    assert canary.stable(legacy).revision == 1
    assert canary.plan_move(legacy, ROLLBACK, everyone).traffic == {"1": 100, "2": 0}
    alone = _record({"1": 100}, [_rev(1, "1.0.0")], [])
    assert canary.stable(alone).revision == 1
    with pytest.raises(ServingError, match="no previous revision to roll back to"):
        canary.plan_move(alone, ROLLBACK, everyone)


def test_with_canary_patches_every_component_like_a_merge_patch() -> None:
    manifest = {"spec": {"predictor": {"canaryTrafficPercent": 20}, "transformer": {}}}
    assert canary.with_canary(manifest, 0)["spec"] == {
        "predictor": {"canaryTrafficPercent": 0}, "transformer": {"canaryTrafficPercent": 0}
    }
    assert canary.with_canary(manifest, None)["spec"] == {"predictor": {}, "transformer": {}}
    assert manifest["spec"]["predictor"] == {"canaryTrafficPercent": 20}  # not changed in place
