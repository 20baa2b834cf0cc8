"""describe's pure parts: the traffic summary, revisions read from a KServe status, and the
"which model replaced which" line."""

from __future__ import annotations

from datetime import UTC, datetime

from kfp_serve.artifacts import ArtifactRecord
from kfp_serve.serving import constants
from kfp_serve.serving.backends.base import EndpointStatus, RevisionStatus
from kfp_serve.serving.delivery import replaced
from kfp_serve.serving.describe import describe, revisions, traffic_summary


def _rev(version: str | None, percent: int, name: str = "iris", **extra) -> RevisionStatus:
    model = {"id": "7", "name": name, **({"version": version} if version else {})}
    return RevisionStatus(name=f"r-{version}", percent=percent, ready=True, model=model, **extra)


def _model(name: str, version: str, model_id: int = 9) -> ArtifactRecord:
    return ArtifactRecord(
        id=model_id, kind="model", name=name, version=version, uri="/m", framework="sklearn",
        framework_version="1", signature={}, snapshot_uri=None, digest=None, author="",
        description="", tags={}, create_time=datetime.now(UTC),
    )


def test_traffic_summary_names_each_model_once() -> None:
    assert traffic_summary([_rev("2.0.0", 20), _rev("1.0.0", 80)]) == (
        "iris 2.0.0 (20 %) / 1.0.0 (80 %)"
    )
    assert traffic_summary([_rev("2.0.0", 30, "churn"), _rev("1.0.0", 70)]) == (
        "churn 2.0.0 (30 %) / iris 1.0.0 (70 %)"
    )
    assert traffic_summary([_rev(None, 100)]) == "model 7 (100 %)"


def test_revisions_from_a_kserve_status() -> None:
    labels = {constants.LABEL_MODEL_ID: "5", constants.LABEL_MODEL_NAME: "iris",
              constants.LABEL_MODEL_VERSION: "2.0.0", constants.LABEL_MODEL_ALIAS: "challenger"}
    config = {constants.ANNOTATION_SERVE_CONFIG: '{"limits": {"cpu": "1"}}'}
    obj = {
        "metadata": {"name": "iris", "labels": labels, "annotations": config,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"predictor": {"canaryTrafficPercent": 10}},
        "status": {"components": {"predictor": {
            "latestCreatedRevision": "iris-predictor-00002",
            "latestReadyRevision": "iris-predictor-00002",
            "latestRolledoutRevision": "iris-predictor-00001",
            "traffic": [{"revisionName": "iris-predictor-00002", "percent": 10},
                        {"revisionName": "iris-predictor-00001", "percent": 90}],
        }}},
    }
    status = EndpointStatus(name="iris", backend="kubernetes", url="http://iris", ready=True,
                            manifest=obj)
    latest, stable = revisions(status)
    assert (latest.name, latest.percent, latest.model["alias"], latest.latest) == (
        "iris-predictor-00002", 10, "challenger", True
    )
    assert (stable.name, stable.percent, stable.stable, stable.model) == (
        "iris-predictor-00001", 90, True, {}
    )
    info = describe(status)
    assert info["traffic"] == "iris 2.0.0 (10 %) / iris-predictor-00001 (90 %)"
    assert info["serve_config"] == {"limits": {"cpu": "1"}}


def test_replaced_says_which_model_replaced_which() -> None:
    before = [_rev("1.0.0", 100)]
    assert replaced("iris", before, _model("iris", "2.0.0")) == "iris: 1.0.0 → 2.0.0"
    assert replaced("ep", before, _model("churn", "3.0.0")) == "ep: iris 1.0.0 → churn 3.0.0"
    assert replaced("iris", before, _model("iris", "1.0.0", model_id=7)) is None
    assert replaced("iris", [], _model("iris", "1.0.0")) is None
