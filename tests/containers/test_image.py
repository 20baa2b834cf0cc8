"""The built image: the venv's versions, everything a step needs, no network needed to run."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import yaml

from tests.containers.conftest import _SESSION, TEST_LABEL

#: Installed last and without their dependencies; their versions are the Makefile's.
NO_DEPS = {"ml-metadata": "1.17.1", "kserve-storage": "0.21.0"}


def run_in_image(client, image: str, command: list[str], **kwargs) -> str:  # noqa: ANN001
    """Run ``command`` in the image with no network at all; its output (fails on exit != 0)."""
    return client.containers.run(
        image, command, network_mode="none", remove=True, labels={TEST_LABEL: _SESSION},
        **kwargs,
    ).decode()


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_image_holds_the_venv_versions(docker_client, image: str) -> None:
    listing = run_in_image(docker_client, image, [
        "python", "-c",
        "import json, importlib.metadata as m; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    ])
    in_image = {canonical(k): v for k, v in json.loads(listing).items()}
    overrides_text = run_in_image(docker_client, image,
                                  ["cat", "/opt/kfp-serve/image-overrides.txt"])
    overrides = {canonical(line.split("==")[0]): line.split("==")[1].split()[0]
                 for line in overrides_text.splitlines() if line.strip()}
    venv = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}

    assert in_image["kfp-serve"] == venv["kfp-serve"]
    for name, version in NO_DEPS.items():
        assert in_image[name] == version
    # venv, pip and setuptools come with the base's Python; everything else is the venv's own
    # version, but for the pins the base's Python refused (listed by the build).
    differ = {
        name: (version, venv.get(name)) for name, version in in_image.items()
        if name not in {"pip", "setuptools", "wheel", *NO_DEPS}
        and version != venv.get(name) and overrides.get(name) != version
    }
    assert differ == {}, f"image version vs venv version: {differ}"
    for name in ("kfp", "kserve", "kubeflow-kale", "ipykernel", "scikit-learn", "xgboost"):
        assert name in in_image


def test_cli_imports_and_entry_point_work_without_network(docker_client, image: str) -> None:
    usage = run_in_image(docker_client, image,
                         ["python", "-m", "kfp_serve.components.entry", "--help"])
    assert "train" in usage and "smoke_predict" in usage
    assert "compile" in run_in_image(docker_client, image, ["kfp-serve", "--help"])
    run_in_image(docker_client, image, [
        "python", "-c",
        "import kfp_serve.pipelines, kfp_serve.kale_steps, kfp_serve.serving.runtime.predictor, "
        "ml_metadata, kserve, kserve_storage, kale",
    ])


def test_image_knows_its_own_name(docker_client, image: str) -> None:
    """A step that starts containers (a transformer's, the Docker backend's) gives them the image
    it runs in, not the default name (make image passes IMAGE= to the build)."""
    named = run_in_image(docker_client, image,
                         ["python", "-c", "import os; print(os.environ['KFP_SERVE_IMAGE'])"])
    assert named.strip() == image


def test_storage_initializer_downloads_into_a_model_dir(
    docker_client, image: str, tmp_path: Path
) -> None:
    """kserve-storage, as KServe's storage initializer runs it, copies a file:// model dir."""
    source = tmp_path / "model"
    source.mkdir()
    (source / "model.joblib").write_bytes(b"weights")
    target = tmp_path / "mnt-models"
    target.mkdir()
    run_in_image(
        docker_client, image,
        ["python", "-c", "import sys; from kserve_storage import Storage; "
         "Storage.download(sys.argv[1], sys.argv[2])", f"file://{source}", "/mnt/models"],
        volumes={str(source): {"bind": str(source), "mode": "ro"},
                 str(target): {"bind": "/mnt/models", "mode": "rw"}},
    )
    assert (target / "model.joblib").read_bytes() == b"weights"


@pytest.mark.parametrize("kind", ["components", "pipelines"])
def test_compiled_steps_install_nothing_at_run_time(compiled: Path, kind: str) -> None:
    """A step that pip-installed would need a package index the cluster may not reach."""
    for path in (compiled / kind).glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for executor in (doc or {}).get("deploymentSpec", {}).get("executors", {}).values():
                command = " ".join(executor["container"].get("command", []))
                assert "pip install" not in command, f"{path.name}: {command[:200]}"
