"""Each palette component's KFP v1 container command runs in the image and writes its outputs.

The palette files (components/palette/*.yaml, compiled against the image under test) are what
Elyra's editor places on a canvas: ``python3 -m kfp_serve.components.entry NAME`` with v1
placeholders. KFP's own loader turns them into container components; chained as a user would
chain them, each runs in the image under kfp.local's DockerRunner.

As in test_pipelines.py, the serve component drives the Docker serving backend, so its endpoint
(containers of its own) outlives the serve container and the smoke_predict component, in its
container, blesses it. kfp.local cannot chain v1 container components' artifacts itself (see
PaletteRunner), so the test does.
"""

# No ``from __future__ import annotations``: KFP reads the pipelines' annotations as objects.
import json
from pathlib import Path

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


class PaletteRunner:
    """Runs one palette component at a time in the image, its artifact inputs given as paths.

    kfp.local passes a container component's output artifacts on only when the command writes
    KFP's executor output file, which a KFP v1 command does not (on a cluster the launcher
    collects them from the output paths). So each component runs in a pipeline of its own, its
    artifact inputs imported from where the previous one wrote them (``dsl.importer``).
    """

    def __init__(self, palette: dict, run: ContainerRun) -> None:
        self.palette = palette
        self.run = run

    def __call__(self, which: str, artifacts: dict | None = None, /, **params) -> Path:
        """Run palette component ``which``; the directory holding its outputs, one file each."""
        from kfp import dsl

        component = self.palette[which]
        pipeline_name = f"palette-{which.replace('_', '-')}"
        imports = artifacts or {}

        @dsl.pipeline(name=pipeline_name)
        def one_step() -> None:
            inputs = {
                key: dsl.importer(artifact_uri=str(path), artifact_class=kind).output
                for key, (path, kind) in imports.items()
            }
            component(**inputs, **params)

        before = set(self.run.pipeline_root.glob(f"{pipeline_name}-*"))
        result = run_logged(one_step)
        assert not result.failed(), result.log[-3000:]
        assert f"Found image '{self.run.image}'" in result.log
        (run_dir,) = set(self.run.pipeline_root.glob(f"{pipeline_name}-*")) - before
        (task_dir,) = [d for d in run_dir.iterdir() if d.is_dir() and "importer" not in d.name]
        return task_dir


def read(task_dir: Path, output: str) -> str:
    """A parameter output the command wrote (outputPath: one file per output)."""
    return (task_dir / output).read_text().strip()


@pytest.mark.timeout(900)
def test_palette_components_run_in_the_image(compiled: Path, container_run: ContainerRun) -> None:
    from kfp import dsl

    from kfp_serve.artifacts import list_artifacts

    container_run.init()
    step = PaletteRunner(load_palette(compiled), container_run)

    trained = step("train", dataset_name="iris", framework="sklearn",
                   estimator="logistic_regression", preprocessing="standard_scaler", n_samples=5)
    assert float(read(trained, "accuracy")) > 0.8
    assert read(trained, "has_transformer") == "true"
    assert (trained / "model" / "model.joblib").is_file()
    assert (trained / "transformer" / "transformer.joblib").is_file()
    assert json.loads((trained / "samples").read_text())

    model = step("submit_model", {"model": (trained / "model", dsl.Model)}, name="iris-palette")
    transformer = step("submit_transformer",
                       {"transformer": (trained / "transformer", dsl.Artifact)},
                       name="iris-palette-scaler")
    model_id = int(read(model, "model_id"))
    transformer_id = int(read(transformer, "transformer_id"))
    snapshots = {
        artifact_id: step("snapshot", {"artifact": (saved, dsl.Artifact)}, artifact_id=artifact_id)
        for artifact_id, saved in ((model_id, model / "saved_model"),
                                   (transformer_id, transformer / "saved_transformer"))
    }
    served = step("serve", model_id=model_id, transformer_id=transformer_id, name=ENDPOINT)

    # What the containers wrote, as this process reads it back from the shared home.
    recorded = {a.id: a for a in list_artifacts()}
    assert recorded[model_id].kind == "model"
    assert recorded[transformer_id].kind == "transformer"
    for artifact_id, task_dir in snapshots.items():
        assert recorded[artifact_id].snapshot_uri == read(task_dir, "uri")
        assert int(read(task_dir, "size")) > 0
    assert read(served, "endpoint_name") == ENDPOINT
    assert read(served, "url").startswith("http://127.0.0.1:")
    text = next(served.rglob("manifest")).read_text()
    isvc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == ENDPOINT

    # The endpoint outlived the serve command's container: smoke-test it from the image.
    smoked = step("smoke_predict", {"samples": (trained / "samples", dsl.Dataset)},
                  endpoint_name=ENDPOINT)
    assert read(smoked, "verdict") == "blessed"
    assert read(smoked, "blessed") == "true"
    assert "blessed" in (smoked / "report").read_text()
