"""Committed component/palette/pipeline YAML: fresh, loadable, and usable by Elyra and kfp."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import compiler, components, dsl

import kfp_serve.components as kfp_serve_components
from kfp_serve.build import generated_files
from kfp_serve.components.palette import ENTRY_MODULE, palette_names

REPO = Path(__file__).resolve().parents[2]
ELYRA_PYTHON = REPO / ".venv-elyra" / "bin" / "python"
ELYRA_PARSE = Path(__file__).with_name("elyra_parse.py")
NAMES = kfp_serve_components.COMPONENT_NAMES
PALETTE_NAMES = palette_names()


def test_generated_files_are_fresh():
    env = {k: v for k, v in os.environ.items() if k != "KFP_SERVE_IMAGE"}
    done = subprocess.run(
        [sys.executable, "-m", "kfp_serve.build", "--check"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (
        "generated YAML is stale — run `python -m kfp_serve.build` and commit the "
        "result:\n"
        + done.stdout + done.stderr
    )


def test_every_component_has_ir_and_palette_yaml():
    files = generated_files()
    for name in NAMES:
        assert f"components/{name}.yaml" in files
    assert {n for n in files if n.startswith("palette/")} == {
        f"palette/{n}.yaml" for n in PALETTE_NAMES}
    # Only a component taking a loop's collected artifacts has no palette file.
    assert set(NAMES) - set(PALETTE_NAMES) == {"smoke_predict_many"}
    assert {"pipelines/sklearn_transformer.yaml", "pipelines/xgboost.yaml"} <= set(files)


@pytest.mark.parametrize("name", NAMES)
def test_component_yaml_loads_with_the_same_interface(name):
    loaded = components.load_component_from_file(str(REPO / "components" / f"{name}.yaml"))
    original = kfp_serve_components.get_component(name)
    assert loaded.component_spec.inputs.keys() == original.component_spec.inputs.keys()
    assert loaded.component_spec.outputs.keys() == original.component_spec.outputs.keys()
    assert loaded.component_spec.description  # the docstring became the UI description


@pytest.mark.parametrize("name", PALETTE_NAMES)
def test_palette_file_is_v1_and_loads_with_kfp(name):
    path = REPO / "components" / "palette" / f"{name}.yaml"
    spec = yaml.safe_load(path.read_text())
    container = spec["implementation"]["container"]
    assert container["command"] == ["python3", "-m", ENTRY_MODULE, name]
    original = kfp_serve_components.get_component(name).component_spec
    assert [i["name"] for i in spec["inputs"]] == list(original.inputs)
    assert [o["name"] for o in spec["outputs"]] == list(original.outputs)
    loaded = components.load_component_from_file(str(path))
    assert set(loaded.component_spec.inputs) == set(original.inputs)
    assert set(loaded.component_spec.outputs) == set(original.outputs)


@pytest.mark.skipif(not ELYRA_PYTHON.exists(), reason="no .venv-elyra (see the Makefile's "
                    "elyra venv target) — Elyra's parser is not available")
def test_palette_files_parse_with_elyras_parser():
    paths = [str(REPO / "components" / "palette" / f"{n}.yaml") for n in PALETTE_NAMES]
    done = subprocess.run([str(ELYRA_PYTHON), str(ELYRA_PARSE), *paths], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    parsed = {Path(p["file"]).stem: p for p in map(json.loads, done.stdout.splitlines())}
    assert set(parsed) == set(PALETTE_NAMES)
    for name, component in parsed.items():
        ids = {p["id"] for p in component["properties"]}
        spec = kfp_serve_components.get_component(name).component_spec
        assert set(spec.inputs) <= ids, name
        assert {f"output_{o}" for o in spec.outputs} <= ids, name
        assert component["description"]
    # Artifacts are wired from a parent's output, not typed in.
    submit_props = {p["id"]: p for p in parsed["submit_model"]["properties"]}
    assert submit_props["model"]["allowed"] == ["inputpath"]


def _palette(name):
    return components.load_component_from_file(
        str(REPO / "components" / "palette" / f"{name}.yaml")
    )


def test_pipeline_of_palette_components_compiles(tmp_path):
    validate, train, submit_model, submit_transformer, snapshot, serve, smoke = (
        _palette(n) for n in ("validate", "train", "submit_model", "submit_transformer",
                              "snapshot", "serve", "smoke_predict")
    )
    rollout = _palette("rollout")

    @dsl.pipeline(name="palette-only")
    def palette_only(endpoint: str = "iris"):
        checked = validate(model_name="iris-classifier", model_version="1.0.0")
        trained = train(dataset_name="iris").after(checked)
        model = submit_model(model=trained.outputs["model"], name="iris-classifier")
        scaler = submit_transformer(transformer=trained.outputs["transformer"],
                                    name="iris-scaler")
        snap_model = snapshot(artifact=model.outputs["saved_model"],
                              artifact_id=model.outputs["model_id"])
        snap_scaler = snapshot(artifact=scaler.outputs["saved_transformer"],
                               artifact_id=scaler.outputs["transformer_id"])
        served = serve(model_id=model.outputs["model_id"],
                       transformer_id=scaler.outputs["transformer_id"], name=endpoint)
        served.after(snap_model, snap_scaler)
        smoke(samples=trained.outputs["samples"], endpoint_name=served.outputs["endpoint_name"])
        rollout(model_id=model.outputs["model_id"], endpoint_name="iris-gated",
                gate='{"offline": {"accuracy": {"min": 0.9}}}').after(snap_model)

    out = tmp_path / "palette_only.yaml"
    compiler.Compiler().compile(palette_only, str(out))
    compiled = yaml.safe_load(out.read_text())
    assert len(compiled["root"]["dag"]["tasks"]) == 9
    images = {e["container"]["image"] for e in compiled["deploymentSpec"]["executors"].values()}
    assert len(images) == 1


@pytest.mark.parametrize("name", NAMES)
def test_component_descriptions_are_plain_one_line_sentences(name):
    """What the KFP UI and Elyra show: no RST markup, no line broken mid-sentence."""
    compiled = yaml.safe_load((REPO / "components" / f"{name}.yaml").read_text())
    for kind in ("inputDefinitions", "outputDefinitions"):
        for group in compiled["root"].get(kind, {}).values():
            for item, spec in group.items():
                text = spec.get("description", "")
                assert "\n" not in text and "``" not in text, f"{name}.{item}: {text!r}"
    if name not in PALETTE_NAMES:
        return
    palette = yaml.safe_load((REPO / "components" / "palette" / f"{name}.yaml").read_text())
    assert "``" not in palette["description"], palette["description"]
    for entry in palette["inputs"] + palette.get("outputs", []):
        assert "``" not in entry.get("description", ""), entry
