"""serve_many / add_model / remove_model on the Kubernetes backend: a parent InferenceService and
one TrainedModel per model on the API double, snapshots in S3 (moto's server), MLMD in SQLite."""

from __future__ import annotations

import pytest

from kfp_serve.serving.backends.base import REASON_MEMORY_UNAVAILABLE
from kfp_serve.serving.errors import ServeConfigError, ServingError
from tests.kserve_schema import SKIP_REASON, reference_available
from tests.kube_double import ISVC, TRAINED_MODEL

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)

CONFIG = {"limits": {"memory": "1Gi"}}


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch):
    """Snapshots go to s3://models/snapshots: what a cluster's TrainedModels can load."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint,
                       "KFP_SERVE_SNAPSHOT_STORE": "s3://models/snapshots"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket="models")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def _submit(name: str, seed: int) -> int:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kfp_serve.artifacts import Model

    x, y = load_iris(return_X_y=True)
    estimator = LogisticRegression(max_iter=200, C=0.5 + seed).fit(x[seed::3], y[seed::3])
    return Model(model=estimator, name=name, version="1.0.0").submit_artifact()


def test_models_become_trained_models_of_one_parent(kube_double, backend, s3_store):
    from kfp_serve import artifacts
    from kfp_serve.serving.multi import add_model, hosted_models, remove_model, serve_many

    east, west = _submit("east", 0), _submit("west", 1)
    endpoint = serve_many("regions", [east, west], CONFIG, memory="200Mi", backend=backend)
    assert endpoint.name == "regions"
    parent = kube_double.get(ISVC, "regions")
    model = parent["spec"]["predictor"]["model"]
    assert "storageUri" not in model and model["resources"]["limits"]["memory"] == "1Gi"
    for name, model_id in (("east", east), ("west", west)):
        tm = kube_double.get(TRAINED_MODEL, name)
        assert tm["spec"]["inferenceService"] == "regions"
        assert tm["spec"]["model"]["storageUri"].startswith("s3://models/snapshots/")
        assert tm["spec"]["model"]["memory"] == "200Mi"
        assert tm["metadata"]["labels"]["kfp-serve.kubeflow.org/model-id"] == str(model_id)
        # Lineage says which endpoint hosts each model.
        assert [d["endpoint"] for d in artifacts.lineage(model_id)["deployments"]] == ["regions"]
    hosted = hosted_models(endpoint)
    assert [(m.name, m.ready, m.version) for m in hosted] == [
        ("east", True, "1.0.0"), ("west", True, "1.0.0")]

    # A model past the memory limit is refused with the numbers; the others keep serving.
    north = _submit("north", 2)
    with pytest.raises(ServingError) as refused:
        add_model(endpoint, north, memory="700Mi")
    assert "declares 700Mi" in str(refused.value) and "400Mi" in str(refused.value)
    states = {m.name: m for m in hosted_models(endpoint)}
    assert states["east"].ready and states["west"].ready
    assert states["north"].reason == REASON_MEMORY_UNAVAILABLE

    remove_model(endpoint, "north")
    remove_model(endpoint, "west")
    assert [m.name for m in hosted_models(endpoint)] == ["east"]
    assert [o["metadata"]["name"] for o in kube_double.store.list(TRAINED_MODEL, "default")[0]
            ] == ["east"]


def test_a_local_snapshot_store_is_refused_before_anything_is_sent(kube_double, backend,
                                                                    monkeypatch):
    from kfp_serve.serving.multi import serve_many

    monkeypatch.delenv("KFP_SERVE_SNAPSHOT_STORE", raising=False)  # file:// under the home
    solo = _submit("solo", 0)
    with pytest.raises(ServeConfigError) as refused:
        serve_many("regions", [solo], CONFIG, backend=backend)
    text = str(refused.value)
    assert "admission rule 'tm-storage-uri'" in text
    assert "KFP_SERVE_SNAPSHOT_STORE=s3://" in text
    assert not kube_double.calls_matching(verb="create", resource="trainedmodels")


def test_a_hosted_model_is_asked_through_the_ingress(kube_double, backend, s3_store,
                                                      monkeypatch):
    from kfp_serve.serving.multi import serve_many

    monkeypatch.setenv("KFP_SERVE_INGRESS", f"127.0.0.1:{kube_double.port}")
    endpoint = serve_many("fleet", [_submit("south", 2)], CONFIG, backend=backend)
    answer = endpoint.predict([[5.1, 3.5, 1.4, 0.2]], model="south")
    assert answer == {"predictions": [0]}  # the double's data plane answers zeros
    host, path, code = kube_double.kserve.data_plane_requests[-1]
    assert (host, path, code) == ("fleet.default.example.com", "/v1/models/south:predict", 200)
