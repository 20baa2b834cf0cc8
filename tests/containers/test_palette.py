"""Each palette component's KFP v1 container command runs in the image and writes its outputs.

The palette files (components/palette/*.yaml, compiled against the image under test) are what
Elyra's editor places on a canvas: ``python3 -m kfp_serve.components.entry NAME`` with v1
placeholders. KFP's own loader turns them into container components; chained as a user would
chain them, each runs in the image under kfp.local's DockerRunner.

As in test_pipelines.py, the endpoint the serve component starts (process backend) ends with its
container; smoke_predict runs against the same records served from this process.
"""

# No ``from __future__ import annotations``: KFP reads the pipelines' annotations as objects.
import json
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.containers.conftest import ContainerRun, run_logged

PALETTE = ("train", "submit_model", "submit_transformer", "snapshot", "serve", "smoke_predict")
ENDPOINT = "iris-palette"


def load_palette(compiled: Path) -> dict:
    """name -> the palette component, loaded with KFP's v1 loader."""
    import kfp.components

    return {
        name: kfp.components.load_component_from_file(
            str(compiled / "components" / "palette" / f"{name}.yaml")
        )
        for name in PALETTE
    }


def test_palette_files_name_the_image_and_the_entry_point(compiled: Path, image: str) -> None:
    for name in PALETTE:
        spec = yaml.safe_load((compiled / "components" / "palette" / f"{name}.yaml").read_text())
        container = spec["implementation"]["container"]
        assert container["image"] == image
        assert container["command"] == ["python3", "-m", "kfp_serve.components.entry", name]


@pytest.mark.timeout(900)
def test_palette_components_run_in_the_image(compiled: Path, container_run: ContainerRun) -> None:
    from kfp import dsl

    from kfp_serve import serve
    from kfp_serve.artifacts import list_artifacts

    palette = load_palette(compiled)

    class ChainOutputs(NamedTuple):
        model_id: int
        transformer_id: int
        model_snapshot: str
        transformer_snapshot: str
        accuracy: float
        url: str

    @dsl.pipeline(name="palette-chain")
    def chain(endpoint: str) -> ChainOutputs:
        trained = palette["train"](
            dataset_name="iris", framework="sklearn", estimator="logistic_regression",
            preprocessing="standard_scaler", n_samples=5,
        )
        model = palette["submit_model"](model=trained.outputs["model"], name="iris-palette")
        transformer = palette["submit_transformer"](
            transformer=trained.outputs["transformer"], name="iris-palette-scaler"
        )
        model_snapshot = palette["snapshot"](
            artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"]
        )
        transformer_snapshot = palette["snapshot"](
            artifact=transformer.outputs["saved_transformer"],
            artifact_id=transformer.outputs["transformer_id"],
        )
        served = palette["serve"](
            model_id=model.outputs["model_id"],
            transformer_id=transformer.outputs["transformer_id"], name=endpoint,
        ).after(model_snapshot, transformer_snapshot)
        return ChainOutputs(
            model.outputs["model_id"], transformer.outputs["transformer_id"],
            model_snapshot.outputs["uri"], transformer_snapshot.outputs["uri"],
            trained.outputs["accuracy"], served.outputs["url"],
        )

    container_run.init()
    result = run_logged(chain, endpoint=ENDPOINT)
    assert not result.failed(), result.log[-3000:]
    assert set(result.statuses) >= {"train", "submit-model", "submit-transformer", "serve"}
    out = result.task.outputs

    # The outputs the containers wrote, as this process reads them back.
    assert out["accuracy"] > 0.8
    assert out["url"].startswith("http://127.0.0.1:")
    recorded = {a.id: a for a in list_artifacts()}
    model_id, transformer_id = int(out["model_id"]), int(out["transformer_id"])
    assert recorded[model_id].kind == "model"
    assert recorded[model_id].snapshot_uri == out["model_snapshot"]
    assert recorded[transformer_id].kind == "transformer"
    assert recorded[transformer_id].snapshot_uri == out["transformer_snapshot"]
    run_dir = next(container_run.pipeline_root.glob("palette-chain-*"))
    assert (run_dir / "train" / "model").is_dir()
    assert any((run_dir / "train" / "model").iterdir())
    manifest = next((run_dir / "serve").rglob("manifest"))
    text = manifest.read_text()
    isvc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == ENDPOINT

    # smoke_predict's palette command, against the same records served from this process.
    serve(model_id, transformer_id, name=ENDPOINT)
    samples = run_dir / "train" / "samples"

    @dsl.pipeline(name="palette-smoke")
    def smoke(endpoint: str) -> str:
        data = dsl.importer(artifact_uri=str(samples), artifact_class=dsl.Dataset)
        return palette["smoke_predict"](samples=data.output, endpoint_name=endpoint).outputs[
            "verdict"
        ]

    smoked = run_logged(smoke, endpoint=ENDPOINT)
    assert not smoked.failed(), smoked.log[-3000:]
    assert smoked.task.output == "blessed"
    (report,) = container_run.pipeline_root.glob("palette-smoke-*/smoke-predict/report")
    assert "blessed" in report.read_text()
