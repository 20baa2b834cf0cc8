"""The multi-model manifests: a parent InferenceService without storageUri and TrainedModels,
checked strictly against both reference CRDs (what a cluster would receive)."""

import pytest

from kfp_serve.serving import ServeConfigError, constants
from kfp_serve.serving.trained_model import (
    API_VERSION,
    is_multi_model,
    memory_bytes,
    model_url,
    parent_framework,
    parent_inference_service,
    server_memory_limit,
    trained_model_manifest,
)
from tests.kserve_schema import SKIP_REASON, reference_available, validate_strict, version_dirs

needs_reference = pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
URI = "s3://models/snapshots/blake3-abc"


def tm(**kw):
    args = {"storage_uri": URI, "framework": "sklearn", "memory": "64Mi"}
    args.update(kw)
    return trained_model_manifest("east", "regions", **args)


def test_a_trained_model_names_its_parent_framework_storage_and_memory():
    m = tm(namespace="team", labels={"team": "ml"})
    assert m["apiVersion"] == API_VERSION and m["kind"] == "TrainedModel"
    assert m["metadata"] == {
        "name": "east",
        "namespace": "team",
        "labels": {"team": "ml", constants.LABEL_MANAGED_BY: constants.MANAGED_BY},
    }
    assert m["spec"] == {
        "inferenceService": "regions",
        "model": {"framework": "sklearn", "storageUri": URI, "memory": "64Mi"},
    }


@needs_reference
def test_both_reference_trained_model_crds_accept_it_strictly():
    assert len(version_dirs()) >= 2
    assert validate_strict(tm(namespace="team", labels={"a": "b"})) == []
    assert validate_strict(tm(memory=1024)) == []


@needs_reference
def test_the_strict_check_catches_a_typo_that_a_server_would_prune():
    m = tm()
    m["spec"]["model"]["storageUrl"] = m["spec"]["model"].pop("storageUri")
    errors = validate_strict(m)
    assert errors and all("storageUrl" in e or "storageUri" in e for e in errors)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"framework": "pytorch"}, "framework"),
        ({"storage_uri": "ftp://x/y"}, "storage_uri"),
        ({"memory": "lots"}, "memory"),
        ({"memory": "0"}, "memory"),
        ({"labels": {constants.LABEL_MANAGED_BY: "me"}}, constants.LABEL_MANAGED_BY),
    ],
    ids=["framework", "scheme", "memory-not-quantity", "memory-zero", "owned-label"],
)
def test_bad_input_names_the_field(kw, field):
    with pytest.raises(ServeConfigError, match=field):
        tm(**kw)


def test_a_bad_model_name_is_refused_before_anything_is_applied():
    with pytest.raises(ValueError, match="model name"):
        trained_model_manifest("East_1", "regions", storage_uri=URI, framework="sklearn",
                               memory="1Mi")


@needs_reference
def test_the_parent_has_a_model_format_and_runtime_but_no_storage_uri():
    parent = parent_inference_service(
        "regions", "xgboost", serve_config={"limits": {"memory": "1Gi"}}
    )
    model = parent["spec"]["predictor"]["model"]
    assert "storageUri" not in model
    assert model["modelFormat"] == {"name": "xgboost"} and model["runtime"] == "kserve-xgbserver"
    assert is_multi_model(parent) and parent_framework(parent) == "xgboost"
    assert server_memory_limit(parent) == 1024**3
    assert validate_strict(parent) == []


def test_a_parent_without_memory_limit_has_none_and_single_model_manifests_are_not_parents():
    parent = parent_inference_service("regions", "sklearn")
    assert server_memory_limit(parent) is None
    from kfp_serve.serving import build_inference_service

    single = build_inference_service("iris", URI, "sklearn")
    assert not is_multi_model(single)
    assert single["spec"]["predictor"]["model"]["storageUri"] == URI


def test_a_parent_refuses_a_model_uri_and_custom_containers():
    from kfp_serve.serving import build_inference_service

    with pytest.raises(ServeConfigError, match="model_uri"):
        build_inference_service("regions", URI, "sklearn", multi_model=True)
    with pytest.raises(ServeConfigError, match="predictor.containers"):
        parent_inference_service(
            "regions", "sklearn",
            serve_config={"predictor": {"containers": [{"name": "kserve-container",
                                                        "image": "x"}]}},
        )


def test_memory_quantities_and_model_urls():
    assert memory_bytes("64Mi") == 64 * 2**20
    assert memory_bytes("1G") == 10**9
    assert memory_bytes(512) == 512
    assert model_url("http://h:1/", "east") == "http://h:1/v1/models/east:predict"
    assert model_url("http://h:1", "east", "v2") == "http://h:1/v2/models/east/infer"
