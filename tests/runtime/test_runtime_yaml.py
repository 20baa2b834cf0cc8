"""serving/runtimes/kfp-serve.yaml validates strictly against the ClusterServingRuntime CRDs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kfp_serve.serving import constants
from tests.kserve_schema import SKIP_REASON, reference_available, validate_strict, version_dirs

RUNTIME_YAML = Path(__file__).resolve().parents[2] / "serving" / "runtimes" / "kfp-serve.yaml"


def _runtime() -> dict:
    return yaml.safe_load(RUNTIME_YAML.read_text())


@pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
def test_validates_strictly_against_every_reference_crd():
    crd = "serving.kserve.io_clusterservingruntimes.yaml"
    dirs = [d for d in version_dirs() if (d / crd).exists()]
    assert len(dirs) >= 2, dirs
    assert validate_strict(_runtime(), "ClusterServingRuntime") == []


@pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
def test_strict_validation_catches_a_typo():
    rt = _runtime()
    rt["spec"]["containers"][0]["argz"] = []
    assert any("argz" in e for e in validate_strict(rt, "ClusterServingRuntime"))


def test_runtime_contents():
    rt = _runtime()
    assert rt["kind"] == "ClusterServingRuntime" and rt["metadata"]["name"] == "kfp-serve"
    spec = rt["spec"]
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    assert formats == {"sklearn", "xgboost"}
    assert all(f["autoSelect"] is False for f in spec["supportedModelFormats"])
    assert spec["protocolVersions"] == ["v1", "v2"]
    (container,) = spec["containers"]
    assert container["image"] == constants.DEFAULT_IMAGE
    assert container["command"][-2:] == ["-m", "kfp_serve.serving.runtime.predictor"]
    for arg in ("--model_name={{.Name}}", "--model_dir=/mnt/models", "--http_port=8080"):
        assert arg in container["args"]
    # In a pod the server must listen beyond loopback; locally it never does by default.
    assert "--http_host=0.0.0.0" in container["args"]
