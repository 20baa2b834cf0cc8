"""Both pipelines, compiled against the built image, run end to end with every step in a container.

kfp.local's DockerRunner starts each step in the image, on the host network, with the kfp-serve
home mounted at the same path (MLMD in SQLite, snapshots and the endpoint registry written by the
containers are the ones this process reads) and the engine's socket: the serve step drives the
Docker serving backend, which starts the endpoint's router, predictor (and transformer) as
containers of their own beside the step's. They outlive the serve step, so the pipeline's own
smoke_predict step, in its container, reaches the endpoint and blesses it.
"""

# No ``from __future__ import annotations``: KFP reads the inner pipeline's annotations as objects.

from pathlib import Path

import pytest

from tests.containers.conftest import ContainerRun, run_logged

PIPELINES = {
    # module name -> has a transformer
    "sklearn_transformer": True,
    "xgboost": False,
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("module", sorted(PIPELINES))
def test_pipeline_runs_end_to_end_in_the_image(
    module: str, compiled: Path, container_run: ContainerRun, docker_client: object
) -> None:
    import kfp.components

    from kfp_serve.artifacts import list_artifacts
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.backends.local.registry import read_record
    from kfp_serve.serving.endpoint import Endpoint

    has_transformer = PIPELINES[module]
    pipeline = kfp.components.load_component_from_file(
        str(compiled / "pipelines" / f"{module}.yaml")
    )
    spec_images = {
        e["container"]["image"]
        for e in pipeline.pipeline_spec.deployment_spec["executors"].values()
    }
    assert spec_images == {container_run.image}

    container_run.init()
    result = run_logged(pipeline)

    assert not result.failed(), result.log[-4000:]
    assert {"serve", "smoke-predict"} <= set(result.statuses), result.statuses
    assert f"Found image '{container_run.image}'" in result.log
    assert result.task.outputs["smoke_verdict"] == "blessed", result.log[-3000:]

    # What the containers recorded is in the shared home: MLMD records, snapshotted.
    recorded = {a.kind: a for a in list_artifacts()}
    assert recorded["model"].snapshot_uri, recorded
    assert ("transformer" in recorded) is has_transformer

    # The endpoint is containers of the image, labelled with the MLMD ids, still serving
    # after the steps' containers are gone.
    endpoint_name = result.task.outputs["endpoint_name"]
    record = read_record(endpoint_name)
    assert record is not None and record.router.container
    roles = {"predictor", "transformer"} if has_transformer else {"predictor"}
    assert {p.role for p in record.latest.processes} == roles
    predictor = docker_client.containers.get(record.latest.predictor.container)
    assert container_run.image in predictor.image.tags
    assert predictor.labels["kfp-serve.kubeflow.org/model-id"] == str(recorded["model"].id)
    status = get_backend().get(endpoint_name)
    assert status.ready and status.backend == "docker", status
    assert Endpoint(endpoint_name).url == status.url
