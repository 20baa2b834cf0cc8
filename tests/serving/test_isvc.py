"""The InferenceService builder: what a cluster would receive, checked strictly."""

import json
import warnings

import pytest

from kfp_serve.serving import (
    KnativeSchedulingWarning,
    Provenance,
    ServeConfig,
    ServeConfigError,
    build_inference_service,
    constants,
)
from kfp_serve.serving.schema import normalize_object
from tests.kserve_schema import SKIP_REASON, reference_available, validate_strict
from tests.serving.test_config import REFERENCE_EXAMPLES

needs_reference = pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
MODEL_URI = "file:///var/kfp-serve/snapshots/blake3-abc"
TRANSFORMER_URI = "s3://models/transformers/blake3-def"
RAW = {"annotations": {constants.ANNOTATION_DEPLOYMENT_MODE: "RawDeployment"}}

FULL_PREDICTOR = {
    "minReplicas": 1,
    "maxReplicas": 4,
    "scaleTarget": 10,
    "scaleMetric": "concurrency",
    "canaryTrafficPercent": 20,
    "containerConcurrency": 8,
    "timeout": 60,
    "batcher": {"maxBatchSize": 32, "maxLatency": 100},
    "logger": {"mode": "all", "url": "http://message-dumper.default"},
    "serviceAccountName": "serving-sa",
    "annotations": {"a": "b"},
    "labels": {"team": "ml"},
    "volumes": [{"name": "cache", "emptyDir": {}}],
    "container": {
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "env": [{"name": "PREDICT_PROBA", "value": "true"}],
    },
}

MANIFESTS = {
    "sklearn-plain": lambda: build_inference_service("iris", MODEL_URI, "sklearn"),
    "xgboost-v2": lambda: build_inference_service(
        "boost", MODEL_URI, "xgboost", serve_config={"protocol_version": "v2"}
    ),
    "lightgbm": lambda: build_inference_service("lgb", MODEL_URI, "lightgbm"),
    "sklearn-transformer-namespace": lambda: build_inference_service(
        "iris",
        MODEL_URI,
        "sklearn",
        transformer_uri=TRANSFORMER_URI,
        namespace="team-a",
        serve_config={"limits": {"memory": "4Gi"}, "env": [{"name": "A", "value": "1"}]},
        provenance=Provenance(
            model_id=7,
            model_version="1.0.0",
            transformer_id=8,
            model_snapshot=MODEL_URI,
            transformer_snapshot=TRANSFORMER_URI,
        ),
    ),
    "every-component-field": lambda: build_inference_service(
        "iris",
        MODEL_URI,
        "sklearn",
        transformer_uri=TRANSFORMER_URI,
        serve_config={
            **RAW,
            "predictor": FULL_PREDICTOR,
            "transformer": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "timeout": 30,
                "logger": {"mode": "request"},
            },
        },
    ),
    "mlserver-v2": lambda: build_inference_service(
        "iris",
        MODEL_URI,
        "sklearn",
        serve_config={"protocol_version": "v2", "predictor": {"runtime": "kserve-mlserver"}},
    ),
    "kfp-serve-runtime": lambda: build_inference_service(
        "iris", MODEL_URI, "xgboost", serve_config={"predictor": {"runtime": "kfp-serve"}}
    ),
    **{
        f"reference-{p.id}": (
            lambda p=p: build_inference_service(
                "iris",
                MODEL_URI,
                "sklearn",
                transformer_uri=TRANSFORMER_URI,
                serve_config=p.values[0](),
            )
        )
        for p in REFERENCE_EXAMPLES
    },
}


def build_quietly(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KnativeSchedulingWarning)
        return make()


@needs_reference
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly_against_both_crds(name):
    assert validate_strict(build_quietly(MANIFESTS[name])) == []


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_key_is_known_to_the_kserve_sdk(name):
    spec = build_quietly(MANIFESTS[name])["spec"]
    # normalize_object raises on any key the SDK's model classes do not declare.
    assert normalize_object(spec, "V1beta1InferenceServiceSpec", "spec") == spec


@needs_reference
def test_strict_validation_catches_a_typo():
    manifest = build_inference_service("iris", MODEL_URI, "sklearn")
    manifest["spec"]["predictor"]["model"]["storageUrl"] = MODEL_URI
    assert any("storageUrl" in e for e in validate_strict(manifest))


def test_sklearn_predictor_names_its_runtime_explicitly():
    model = build_inference_service(
        "iris", MODEL_URI, "sklearn", serve_config={"protocol_version": "v2"}
    )["spec"]["predictor"]["model"]
    # sklearn + v2 without an explicit runtime would be auto-selected to kserve-mlserver.
    assert model == {
        "modelFormat": {"name": "sklearn"},
        "runtime": "kserve-sklearnserver",
        "storageUri": MODEL_URI,
        "protocolVersion": "v2",
    }


@pytest.mark.parametrize(
    "framework, runtime",
    [
        ("sklearn", "kserve-sklearnserver"),
        ("xgboost", "kserve-xgbserver"),
        ("lightgbm", "kserve-lgbserver"),
    ],
)
def test_default_runtime_per_framework(framework, runtime):
    model = build_inference_service("m", MODEL_URI, framework)["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime
    assert model["protocolVersion"] == "v1"


def test_runtime_version_and_container_overrides_reach_the_model():
    model = build_inference_service(
        "m",
        MODEL_URI,
        "sklearn",
        serve_config={
            "runtime_version": "v0.15.2",
            "limits": {"cpu": "1"},
            "predictor": {"container": {"env": [{"name": "PREDICT_PROBA", "value": "true"}]}},
        },
    )["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == "v0.15.2"
    assert model["env"] == [{"name": "PREDICT_PROBA", "value": "true"}]
    assert model["resources"] == {"limits": {"cpu": "1"}}


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_transformer_runs_our_runtime_speaking_the_predictor_protocol(protocol, monkeypatch):
    monkeypatch.setenv(constants.IMAGE_ENV, "registry.local/kfp-serve:test")
    manifest = build_inference_service(
        "iris",
        MODEL_URI,
        "sklearn",
        transformer_uri=TRANSFORMER_URI,
        serve_config={"protocol_version": protocol},
    )
    (container,) = manifest["spec"]["transformer"]["containers"]
    assert container["image"] == "registry.local/kfp-serve:test"
    assert container["command"] == ["python", "-m", "kfp_serve.serving.runtime.transformer"]
    assert f"--predictor_protocol={protocol}" in container["args"]
    assert {"name": "STORAGE_URI", "value": TRANSFORMER_URI} in container["env"]


def test_provenance_labels_and_config_annotation_trace_back():
    cfg = ServeConfig(limits={"memory": "4Gi"}, labels={"team": "ml"})
    meta = build_inference_service(
        "iris",
        MODEL_URI,
        "sklearn",
        transformer_uri=TRANSFORMER_URI,
        serve_config=cfg,
        provenance=Provenance(
            model_id=7,
            model_version="1.0.0",
            transformer_id=8,
            model_snapshot=MODEL_URI,
            transformer_snapshot=TRANSFORMER_URI,
        ),
    )["metadata"]
    assert meta["labels"] == {
        "team": "ml",
        constants.LABEL_MANAGED_BY: "kfp-serve",
        constants.LABEL_MODEL_ID: "7",
        constants.LABEL_TRANSFORMER_ID: "8",
        constants.LABEL_MODEL_VERSION: "1.0.0",
    }
    recorded = json.loads(meta["annotations"][constants.ANNOTATION_SERVE_CONFIG])
    assert ServeConfig.from_dict(recorded) == cfg
    assert meta["annotations"][constants.ANNOTATION_MODEL_SNAPSHOT] == MODEL_URI
    assert meta["annotations"][constants.ANNOTATION_TRANSFORMER_SNAPSHOT] == TRANSFORMER_URI


def test_builder_is_pure():
    assert MANIFESTS["every-component-field"]() == MANIFESTS["every-component-field"]()


@pytest.mark.parametrize(
    "config, expect_warning",
    [
        pytest.param({"node_selector": {"a": "b"}}, True, id="generic-node-selector"),
        pytest.param(
            {"predictor": {"tolerations": [{"key": "k", "operator": "Exists"}]}},
            True,
            id="predictor-tolerations",
        ),
        pytest.param(
            {"transformer": {"affinity": {"nodeAffinity": {}}}}, True, id="transformer-affinity"
        ),
        pytest.param({**RAW, "node_selector": {"a": "b"}}, False, id="raw-deployment-mode"),
        pytest.param({"limits": {"cpu": "1"}}, False, id="no-scheduling-fields"),
    ],
)
def test_knative_warning_names_the_feature_flags(config, expect_warning, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_inference_service(
            "iris", MODEL_URI, "sklearn", transformer_uri=TRANSFORMER_URI, serve_config=config
        )
    knative = [w for w in caught if issubclass(w.category, KnativeSchedulingWarning)]
    assert bool(knative) == expect_warning
    if expect_warning:
        assert "kubernetes.podspec-" in str(knative[0].message)
        assert "kubernetes.podspec-" in caplog.text


BAD_BUILDS = [
    ("name-upper-case", dict(name="Iris"), "name"),
    ("name-traversal", dict(name="../etc"), "name"),
    ("name-injection", dict(name="iris;rm -rf"), "name"),
    ("name-newline", dict(name="iris\nx"), "name"),
    ("name-too-long", dict(name="a" * 64), "name"),
    ("namespace-invalid", dict(namespace="Team_A"), "namespace"),
    ("framework-unknown", dict(framework="tensorflow"), "framework"),
    ("model-uri-scheme", dict(model_uri="ftp://host/model"), "model_uri"),
    ("model-uri-bare-path", dict(model_uri="/tmp/model"), "model_uri"),
    ("transformer-uri-scheme", dict(transformer_uri="nope"), "transformer_uri"),
    (
        "config-unknown-key",
        dict(serve_config={"predictor": {"container": {"resourcez": {}}}}),
        "predictor.container.resourcez",
    ),
    (
        "mlserver-needs-v2",
        dict(serve_config={"predictor": {"runtime": "kserve-mlserver"}}),
        "predictor.runtime",
    ),
    (
        "owned-label",
        dict(serve_config={"labels": {constants.LABEL_MANAGED_BY: "me"}}),
        constants.LABEL_MANAGED_BY,
    ),
]


@pytest.mark.parametrize("overrides, field", [pytest.param(*r[1:], id=r[0]) for r in BAD_BUILDS])
def test_bad_builder_input_names_the_field(overrides, field):
    kwargs = dict(name="iris", model_uri=MODEL_URI, framework="sklearn") | overrides
    name, model_uri, framework = (
        kwargs.pop("name"),
        kwargs.pop("model_uri"),
        kwargs.pop("framework"),
    )
    with pytest.raises(ValueError) as info:
        build_inference_service(name, model_uri, framework, **kwargs)
    assert field in str(info.value)
    if field not in ("name", "namespace"):
        assert isinstance(info.value, ServeConfigError)
