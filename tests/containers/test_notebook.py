"""A Kale-compiled example notebook runs under DockerRunner, every step in the image.

Kale compiles the tagged notebook offline (its own CLI) with the image under test as the
notebook's base image; each step pip-installs what the imports cell names (already in the image:
the steps get no package index, so a missing one fails the run) and marshals its variables to the
next step. The deploy step serves and smoke-tests in one container, so this pipeline runs end to
end even before the Docker serving backend exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.containers.conftest import REPO, ContainerRun, run_logged

NOTEBOOK = REPO / "kale_steps" / "examples" / "sklearn_wine.ipynb"


def kale_compile(notebook: Path, image: str, workdir: Path) -> Path:
    """Compile ``notebook`` with Kale's CLI, its base image set to ``image``; the pipeline YAML."""
    nb = nbformat.read(notebook, as_version=4)
    meta = nb.metadata["kubeflow_notebook"]
    meta["base_image"] = image
    nbformat.write(nb, workdir / notebook.name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # Without HOSTNAME Kale does not look for a notebook server pod, so it never calls a cluster.
    env.pop("HOSTNAME", None)
    command = [
        shutil.which("kale", path=env["PATH"]) or "kale", "--nb", notebook.name,
        "--pipeline_name", meta["pipeline_name"], "--experiment_name", meta["experiment_name"],
    ]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir / ".kale" / f"{meta['pipeline_name']}.pipeline.yaml"


def step_metrics(root: Path) -> dict[str, float]:
    """The pipeline metrics the steps logged (the notebook's ``pipeline-metrics`` cell)."""
    metrics: dict[str, float] = {}
    for path in root.rglob("executor_output.json"):
        artifacts = json.loads(path.read_text()).get("artifacts", {})
        for artifact in artifacts.get("kale_metrics_artifact", {}).get("artifacts", []):
            metrics.update(artifact.get("metadata", {}))
    return metrics


@pytest.mark.timeout(900)
def test_kale_notebook_pipeline_runs_in_the_image(
    container_run: ContainerRun, tmp_path: Path
) -> None:
    import kfp.components

    from kfp_serve.artifacts import list_artifacts

    workdir = tmp_path / "kale"
    workdir.mkdir()
    compiled = kale_compile(NOTEBOOK, container_run.image, workdir)
    pipeline = kfp.components.load_component_from_file(str(compiled))
    images = {e["container"]["image"]
              for e in pipeline.pipeline_spec.deployment_spec["executors"].values()}
    assert images == {container_run.image}

    container_run.init()
    result = run_logged(pipeline, endpoint_name="wine-in-docker")
    assert result.statuses, result.log[-3000:]
    assert not result.failed(), result.log[-3000:]

    metrics = step_metrics(container_run.pipeline_root)
    assert metrics["accuracy"] > 0.8
    assert metrics["smoke-p50-ms"] > 0  # the deploy step's smoke test answered
    recorded = {a.kind: a for a in list_artifacts()}
    assert recorded["model"].name == "wine-in-docker-classifier"
    assert recorded["model"].snapshot_uri
    assert recorded["transformer"].snapshot_uri
