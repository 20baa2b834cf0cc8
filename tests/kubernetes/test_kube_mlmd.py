"""serve() through the Kubernetes backend records the deployment in ML Metadata, once with the
local SQLite store and once with MLMD's gRPC service reached the way a KFP step reaches it
(``METADATA_GRPC_SERVICE_HOST``/``_PORT``)."""

from __future__ import annotations

import pytest
from sklearn.linear_model import LogisticRegression

from kfp_serve import artifacts, serving
from tests.kube_double import ISVC
from tests.mlmd_grpc.fixtures import start_mlmd_grpc  # noqa: F401


@pytest.fixture(params=["sqlite", "grpc"])
def mlmd_store(request, tmp_path, monkeypatch, start_mlmd_grpc):  # noqa: F811
    """A fresh KFP_SERVE_HOME, and MLMD over its SQLite file or through the gRPC service."""
    for var in ("KFP_SERVE_MLMD", "METADATA_GRPC_SERVICE_HOST", "METADATA_GRPC_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("KFP_SERVE_HOME", str(home))
    if request.param == "grpc":
        server = start_mlmd_grpc(db=tmp_path / "cluster-mlmd.sqlite")
        monkeypatch.setenv("METADATA_GRPC_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("METADATA_GRPC_SERVICE_PORT", str(server.port))
    return request.param


def test_serving_on_the_cluster_records_the_deployment(kube_double, kubeconfig, mlmd_store):
    from sklearn.datasets import load_iris

    kube_double.kserve.program(delay=0.2)
    X, y = load_iris(return_X_y=True)
    model_id = artifacts.Model(
        model=LogisticRegression(max_iter=300).fit(X, y), name="iris"
    ).submit_artifact()

    serving.serve(model_id, name="iris", backend="kubernetes", timeout=20)

    applied = kube_double.get(ISVC, "iris")
    [deployment] = artifacts.lineage(model_id)["deployments"]
    assert (deployment["endpoint"], deployment["namespace"]) == ("iris", "default")
    assert deployment["url"] == applied["status"]["url"]
    assert deployment["model_id"] == model_id
    record = artifacts.get_artifact(model_id)
    storage = applied["spec"]["predictor"]["model"]["storageUri"]
    assert record.snapshot_uri and storage == record.snapshot_uri
    assert artifacts.metadata_store().uri.startswith(f"{mlmd_store}://")
