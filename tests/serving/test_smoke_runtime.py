"""smoke: the expected answers are the ones the manifest's runtime gives, and only those."""

from __future__ import annotations

import pytest

from kfp_serve.serving.smoke import check_predictions, runtime_expectation

SAMPLES = {
    "instances": [[1.0, 2.0], [3.0, 4.0]],
    "expected": [0, 1],
    "expected_values": [[0.9, 0.1], [0.2, 0.8]],
    "output": "label",
}


def _manifest(runtime: str | None, proba: bool = False) -> dict:
    model = {"storageUri": "file:///m"}
    if runtime:
        model["runtime"] = runtime
    if proba:
        model["env"] = [{"name": "PREDICT_PROBA", "value": "true"}]
    return {"spec": {"predictor": {"model": model}}}


@pytest.mark.parametrize(
    ("runtime", "proba", "answers", "blessed"),
    [
        pytest.param("kserve-xgbserver", False, [0.1, 0.8], True, id="xgbserver-booster-output"),
        pytest.param("kserve-xgbserver", False, [0, 1], False, id="xgbserver-labels-mismatch"),
        pytest.param("kserve-lgbserver", False, [0.1, 0.8], True, id="lgbserver-booster-output"),
        pytest.param("kserve-lgbserver", True, [0, 1], False, id="lgbserver-labels-mismatch"),
        pytest.param("kserve-sklearnserver", False, [0, 1], True, id="sklearn-labels"),
        pytest.param("kserve-sklearnserver", False, [[0.9, 0.1], [0.2, 0.8]], False,
                     id="sklearn-probabilities-without-proba-mismatch"),
        pytest.param("kserve-sklearnserver", True, [[0.9, 0.1], [0.2, 0.8]], True,
                     id="sklearn-predict-proba"),
        pytest.param("kserve-sklearnserver", True, [0, 1], False, id="sklearn-proba-got-labels"),
        pytest.param("kfp-serve", False, [0, 1], True, id="kfp-serve-labels"),
        pytest.param(None, False, [0.1, 0.8], True, id="custom-runtime-stays-lenient"),
    ],
)
def test_smoke_compares_with_the_named_runtime(runtime, proba, answers, blessed):
    expected, output, alternatives = runtime_expectation(_manifest(runtime, proba), SAMPLES)
    answer = iter(answers)
    result = check_predictions(
        lambda rows: [next(answer)], SAMPLES["instances"], expected,
        expected_values=alternatives, output=output, deadline_s=1,
    )
    assert result.blessed is blessed, result.message


@pytest.mark.parametrize("role", ["predictor", "transformer"])
@pytest.mark.parametrize(
    ("args", "port"),
    [(["--enable_grpc=true"], 8081), (["--grpc_port=9000"], 9000), (["--workers=2"], None)],
)
def test_manifest_declares_the_grpc_port_kserve_expects(args, port, role):
    from kfp_serve.serving.isvc import build_inference_service
    from tests.kserve_schema import reference_available, validate_strict

    manifest = build_inference_service(
        "iris", "file:///m", "sklearn",
        transformer_uri="file:///t" if role == "transformer" else None,
        serve_config={role: {"container": {"args": args}}},
    )
    spec = manifest["spec"][role]
    container = spec["model"] if role == "predictor" else spec["containers"][0]
    if port is None:
        assert "ports" not in container
    else:
        assert container["ports"] == [{"name": "h2c", "containerPort": port, "protocol": "TCP"}]
        assert container["args"] == args
    if reference_available():
        assert validate_strict(manifest) == []  # both KServe releases' CRDs, strictly
