"""serve → rollout → rollback/promote → stop through ``kfp_serve.serving.delivery`` on the
Kubernetes backend (the API double playing KServe's controller): describe reads the revisions
from the KServe status, MLMD records the intervals, the stable model known from lineage."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression

from kfp_serve import artifacts, serving
from kfp_serve.serving import delivery
from kfp_serve.serving.backends.base import get_backend
from kfp_serve.serving.describe import describe

V1, V2 = "iris-predictor-00001", "iris-predictor-00002"


@pytest.fixture
def versions(tmp_path, monkeypatch, kube_double, kubeconfig):
    from sklearn.datasets import load_iris

    for var in ("KFP_SERVE_MLMD", "METADATA_GRPC_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "kubernetes")
    kube_double.kserve.program(delay=0.05)
    X, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=300).fit(X, y)
    return tuple(
        artifacts.Model(model=clf, name="iris", version=v).submit_artifact()
        for v in ("1.0.0", "2.0.0")
    )


def _intervals(model_id: int) -> list[tuple[int, bool]]:
    deps = sorted(artifacts.lineage(model_id)["deployments"], key=lambda d: d["execution_id"])
    return [(d["traffic_percent"], d["serving"]) for d in deps]


def test_canary_on_the_cluster(versions, capsys):
    old, new = versions
    serving.serve("iris:1.0.0", name="iris", timeout=20)
    delivery.rollout("iris", "iris:2.0.0", canary=20, timeout=20)
    assert "iris: 1.0.0 → 2.0.0" in capsys.readouterr().err

    status = get_backend().get("iris")
    # The cluster labels only the spec applied last: the stable revision is named, not its model.
    assert describe(status)["traffic"] == f"iris 2.0.0 (20 %) / {V1} (80 %)"
    stable = describe(status)["revisions"][1]
    assert (stable["name"], stable["stable"], stable["model"]) == (V1, True, {})
    # MLMD knows it from the interval that was open: 1.0.0 now serves 80 %.
    assert _intervals(old) == [(100, False), (80, True)]
    assert _intervals(new) == [(20, True)]
    info = describe(status, delivery.known_revisions(status))
    assert info["traffic"] == "iris 2.0.0 (20 %) / 1.0.0 (80 %)"
    latest, stable = info["revisions"]
    assert (latest["name"], latest["model"]["version"], latest["latest"]) == (V2, "2.0.0", True)
    assert (stable["name"], stable["model"]["id"]) == (V1, str(old))

    state = delivery.rollback("iris", timeout=10)
    assert state.traffic == {V2: 0, V1: 100}
    status = get_backend().get("iris")
    assert describe(status, delivery.known_revisions(status))["traffic"] == (
        "iris 2.0.0 (0 %) / 1.0.0 (100 %)"
    )
    assert _intervals(new) == [(20, False)] and _intervals(old)[-1] == (100, True)

    assert delivery.promote("iris", timeout=10).traffic == {V2: 100}
    assert _intervals(old)[-1] == (100, False) and _intervals(new)[-1] == (100, True)

    delivery.stop("iris")
    assert not any(serving for _, serving in _intervals(new))


def test_describe_lists_the_inference_services_events(versions, kube_double):
    """Every rollout step is a core/v1 Event on the InferenceService, next to the controller's
    own; describe lists them newest last, like the local registry's events."""
    from typer.testing import CliRunner

    from kfp_serve.cli import app
    from kfp_serve.serving.endpoint import Endpoint
    from tests.kube_double.store import EVENT, ISVC

    serving.serve("iris:1.0.0", name="iris", timeout=20)
    delivery.rollout("iris", "iris:2.0.0", canary=20, timeout=20)
    delivery.rollback("iris", timeout=10)
    delivery.promote("iris", timeout=10)

    events = Endpoint("iris").describe()["events"]
    ours = [(e["action"], e["source"]) for e in events if e["source"] == "kfp-serve"]
    assert [a for a, _ in ours] == ["serve", "rollout", "rollback", "promote"]
    assert events[0]["action"] == "serve" and "iris 1.0.0" in events[0]["message"]
    [rollout] = [e for e in events if e["action"] == "rollout"]
    assert "model iris 2.0.0" in rollout["message"] and "with 20 % of requests" in rollout[
        "message"]
    assert "promote: traffic now iris-predictor-00002 100 %" == events[-1]["message"]
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    # KServe's controller speaks too: Ready after the serve and after the rollout.
    ready = [e for e in events if e["action"] == "InferenceServiceReady"]
    assert len(ready) >= 2 and ready[0]["source"] == "v1beta1Controllers"
    assert ready[0]["message"] == "InferenceService [iris] is Ready"

    # Stored as a Kubernetes user expects: about this very InferenceService (its uid).
    uid = kube_double.get(ISVC, "iris")["metadata"]["uid"]
    stored, _ = kube_double.store.list(EVENT, "default")
    assert {e["involvedObject"]["uid"] for e in stored} == {uid}
    promoted = next(e for e in stored if e["reason"] == "Promoted")
    assert (promoted["type"], promoted["involvedObject"]["kind"], promoted["count"]) == (
        "Normal", "InferenceService", 1)

    out = CliRunner().invoke(app, ["describe", "iris"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "recent events" in out.output and "rollback" in out.output

    # A new InferenceService of the same name starts with a clean history.
    delivery.stop("iris")
    serving.serve("iris:2.0.0", name="iris", timeout=20)
    again = Endpoint("iris").describe()["events"]
    assert [e["action"] for e in again if e["source"] == "kfp-serve"] == ["serve"]


def test_events_refused_by_rbac_do_not_stop_a_rollout(versions, kube_double):
    """Without the events verbs the rollout still happens; describe says nothing false."""
    from kfp_serve.serving.endpoint import Endpoint

    kube_double.rbac_rules = [{"apiGroups": ["serving.kserve.io"],
                               "resources": ["inferenceservices"], "verbs": ["*"]}]
    serving.serve("iris:1.0.0", name="iris", timeout=20)
    info = Endpoint("iris").describe()
    assert info["ready"] and info["events"] == []
    assert [c.code for c in kube_double.calls_matching("create", "events")] == [403]
