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
