"""Deployments as intervals in a real MLMD store: shares, ends, and what lineage claims."""

from __future__ import annotations

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts import Model, Share, Transformer
from kfp_serve.lineage_view import lineage_rows

pytestmark = pytest.mark.every_store


def _deployments(model_id: int) -> list[dict]:
    return sorted(artifacts.lineage(model_id)["deployments"], key=lambda d: d["execution_id"])


def test_canary_promote_and_stop_as_intervals(home, classifier):
    old = Model(model=classifier, name="iris", version="1.0.0").submit_artifact()
    new = Model(model=classifier, name="iris", version="2.0.0").submit_artifact()
    artifacts.record_deployment("iris", None, old, url="http://127.0.0.1:9")
    # A 20 % canary: the old model's 100 % interval ends, an 80 % one opens; 20 % for the new.
    artifacts.record_traffic("iris", None, [Share(new, 20), Share(old, 80)], "http://127.0.0.1:9")
    first, second = _deployments(old)
    assert (first["traffic_percent"], first["serving"], first["end_reason"]) == (
        100, False, "traffic changed"
    )
    assert (second["traffic_percent"], second["serving"]) == (80, True)
    [canary] = _deployments(new)
    assert (canary["traffic_percent"], canary["serving"], canary["end_time"]) == (20, True, None)

    # The same split again changes nothing (no new interval).
    artifacts.record_traffic("iris", None, [Share(new, 20), Share(old, 80)], "http://127.0.0.1:9")
    assert len(_deployments(old)) == 2 and len(_deployments(new)) == 1

    # Promote: the new model takes all; the old one no longer serves.
    artifacts.record_traffic("iris", None, [Share(new, 100)], reason="promoted")
    assert [d["serving"] for d in _deployments(old)] == [False, False]
    assert _deployments(old)[1]["end_reason"] == "promoted"
    assert [(d["traffic_percent"], d["serving"]) for d in _deployments(new)] == [
        (20, False), (100, True)
    ]
    rows = [r for r in lineage_rows(artifacts.lineage(new)) if r[0] == "served by"]
    assert rows[0][1].startswith("iris 20 % from ") and " to 20" in rows[0][1]
    assert rows[1][1].startswith("iris 100 % from ") and rows[1][1].endswith(" to now")

    artifacts.end_deployments("iris", None)
    assert not any(d["serving"] for d in _deployments(new))
    assert _deployments(new)[-1]["end_reason"] == "stopped"
    rows = [r for r in lineage_rows(artifacts.lineage(new)) if r[0] == "served by"]
    assert not any(r[1].endswith(" to now") for r in rows)


def test_unnamed_revision_is_the_open_interval_nobody_names(home, classifier, scaler):
    """A cluster reports the stable revision without its model: it is the one that served."""
    tid = Transformer(name="scaler", transformer=scaler).submit_artifact()
    old = Model(model=classifier, name="churn", version="1.0.0").submit_artifact()
    new = Model(model=classifier, name="churn", version="2.0.0").submit_artifact()
    artifacts.record_deployment("churn", "team-a", old, tid)
    artifacts.record_traffic("churn", "team-a", [Share(new, 30), Share(None, 70)])
    [_, stable] = _deployments(old)
    assert (stable["traffic_percent"], stable["transformer_id"]) == (70, tid)
    assert stable["serving"]
    # Another namespace's endpoint of the same name is a different endpoint.
    artifacts.end_deployments("churn", "team-b")
    assert _deployments(old)[1]["serving"]
