"""The example notebooks: Kale notebooks that run locally, compile, and run as pipelines.

Three real paths, no stand-ins: each notebook runs top to bottom in a Jupyter kernel (nbclient)
on the embedded defaults; Kale's own CLI compiles it offline into KFP pipeline YAML; and that
YAML runs end to end under ``kfp.local.SubprocessRunner``, with Kale marshalling the variables
between steps. Each path must end with an endpoint whose predictions equal the notebook's own.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from tests.kale.conftest import NOTEBOOKS, notebook_ids, venv_env

pytestmark = pytest.mark.parametrize("notebook", NOTEBOOKS, ids=notebook_ids())

PROBE = "KFP_SERVE_PROBE "
# Appended to a copy of the notebook: reports what the notebook served and predicted, so the
# test can ask the endpoint itself from this process.
PROBE_CELL = f"""
import json as _json
print({PROBE!r} + _json.dumps({{
    "name": endpoint["name"],
    "samples": samples.tolist(),
    "expected": expected.tolist(),
    "passed": smoke["passed"],
}}))
"""
KALE_TAGS = ("imports", "functions", "pipeline-parameters", "pipeline-metrics")


def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def tags_of(cell: Any) -> list[str]:
    return list(cell.metadata.get("tags", []))


# ---------------------------------------------------------------------------------------------
# the notebook as a reader and Kale see it


def test_notebook_has_kale_metadata_and_tags(notebook: Path) -> None:
    from kale.processors.constants import TAGS_LANGUAGE

    from kfp_serve.serving.constants import DEFAULT_IMAGE

    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    meta = nb.metadata["kubeflow_notebook"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["pipeline_name"])
    assert meta["experiment_name"]
    assert meta["base_image"] == DEFAULT_IMAGE
    # A cached deploy step would skip serving on a re-run and report a stale endpoint.
    assert meta["enable_caching"] is False

    all_tags = [t for c in code_cells(nb) for t in tags_of(c)]
    for tag in all_tags:
        assert any(re.match(p, tag) for p in TAGS_LANGUAGE), f"not a Kale tag: {tag!r}"
    for tag in KALE_TAGS:
        assert tag in all_tags, f"no cell tagged {tag!r}"
    steps = [t.split(":", 1)[1] for t in all_tags if t.startswith("step:")]
    assert len(steps) >= 2
    # Every step after the first names its predecessor, and each step is explained to a reader.
    for index, cell in enumerate(nb.cells):
        if any(t.startswith("step:") for t in tags_of(cell)):
            assert nb.cells[index - 1].cell_type == "markdown", "a step without a markdown intro"
            prev = [t for t in tags_of(cell) if t.startswith("prev:")]
            step = next(t for t in tags_of(cell) if t.startswith("step:")).split(":", 1)[1]
            if step != steps[0]:
                assert prev and prev[0].split(":", 1)[1] in steps
    # Committed notebooks carry no outputs (they would go stale and bloat diffs).
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code_cells(nb))


def test_every_package_kale_installs_is_in_the_image(notebook: Path) -> None:
    """Kale pip-installs each top-level import of the ``imports`` cell in every step pod.

    A module that is not a distribution (``kale_steps``, ``serving``) would make pip look for
    a package of that name on PyPI: at best the step fails, at worst it installs a stranger's
    package. Everything Kale asks for must be installed here, as in the kfp-serve image.
    """
    from kale.common.imports import get_packages_to_install
    from kale.processors import NotebookProcessor

    processor = NotebookProcessor(str(notebook))
    processor.run()
    packages = get_packages_to_install(processor.get_imports_and_functions())
    missing = []
    for package in sorted(packages):
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    assert not missing, f"Kale would pip-install {missing}, which are not installed packages"


# ---------------------------------------------------------------------------------------------
# running the notebook locally


def test_notebook_runs_top_to_bottom_locally(
    notebook: Path, kfp_serve_home: Path, tmp_path: Path
) -> None:
    from nbclient import NotebookClient

    from kfp_serve.serving import Endpoint

    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE_CELL))
    workdir = tmp_path / "work"
    workdir.mkdir()
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()

    probe = _probe_output(nb.cells[-1])
    assert probe["passed"] is True
    # Ask the endpoint ourselves: it must answer what the notebook's own model predicted.
    endpoint = Endpoint(probe["name"])
    assert endpoint.predictions(probe["samples"]) == probe["expected"]


def _probe_output(cell: Any) -> dict[str, Any]:
    for output in cell.outputs:
        for line in output.get("text", "").splitlines():
            if line.startswith(PROBE):
                return json.loads(line[len(PROBE) :])
    raise AssertionError(f"the probe cell printed nothing: {cell.outputs}")


# ---------------------------------------------------------------------------------------------
# compiling with Kale, running the compiled pipeline


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Compile a notebook once per module with Kale's CLI (offline); the pipeline YAML path."""
    cache: dict[Path, Path] = {}

    def compile_notebook(notebook: Path) -> Path:
        if notebook not in cache:
            workdir = tmp_path_factory.mktemp(f"kale-{notebook.stem}")
            shutil.copy(notebook, workdir / notebook.name)
            meta = nbformat.read(notebook, as_version=4).metadata["kubeflow_notebook"]
            # Without HOSTNAME Kale does not look for a notebook server pod to copy PodDefault
            # labels from, so it never tries to reach a cluster.
            env = venv_env()
            env.pop("HOSTNAME", None)
            # The command the README gives: the CLI's own name defaults would override the
            # notebook's metadata.
            command = [
                str(Path(sys.executable).parent / "kale"),
                "--nb",
                notebook.name,
                "--pipeline_name",
                meta["pipeline_name"],
                "--experiment_name",
                meta["experiment_name"],
            ]
            result = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, result.stdout + result.stderr
            output = workdir / ".kale" / f"{meta['pipeline_name']}.pipeline.yaml"
            assert output.is_file(), result.stdout + result.stderr
            cache[notebook] = output
        return cache[notebook]

    return compile_notebook


def test_kale_compiles_the_notebook(notebook: Path, compiled: Callable[[Path], Path]) -> None:
    from kfp_serve.serving.constants import DEFAULT_IMAGE

    # The pipeline spec, then (Kale always imports kfp.kubernetes) its platform spec.
    spec = next(yaml.safe_load_all(compiled(notebook).read_text()))
    nb = nbformat.read(notebook, as_version=4)
    steps = {
        t.split(":", 1)[1] for c in code_cells(nb) for t in tags_of(c) if t.startswith("step:")
    }
    executors = spec["deploymentSpec"]["executors"]
    assert {f"exec-{s.replace('_', '-')}-step" for s in steps} <= set(executors)
    for executor in executors.values():
        assert executor["container"]["image"] == DEFAULT_IMAGE
    assert spec["pipelineInfo"]["name"] == nb.metadata["kubeflow_notebook"]["pipeline_name"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"endpoint_name", "snapshot_store"} <= set(params)


@pytest.mark.timeout(300)
# kfp.local warns that the kfp-serve image is not a "python" image; this venv stands in for it.
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")
def test_compiled_pipeline_runs_under_kfp_local(
    notebook: Path,
    compiled: Callable[[Path], Path],
    kfp_serve_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kfp.components
    import kfp.local

    from kfp_serve.artifacts import list_artifacts
    from kfp_serve.serving import Endpoint

    # Each step pip-installs what the imports cell names; everything is already installed in
    # this venv (as in the image), and nothing may be downloaded from a test.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    root = tmp_path / "pipeline-root"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = kfp.components.load_component_from_file(str(compiled(notebook)))
    defaults = pipeline.component_spec.inputs["endpoint_name"].default
    endpoint_name = f"{defaults}-pipeline"
    # A pipeline parameter flows into the steps: the endpoint gets the name given here.
    pipeline(endpoint_name=endpoint_name)

    # The objects the pipeline's own steps computed, as Kale marshalled them between steps.
    objects = {name: load_marshalled(root, name) for name in ("x_test", "model", "scaler")}
    samples = objects["x_test"][:10]
    features = objects["scaler"].transform(samples) if objects["scaler"] is not None else samples
    answers = Endpoint(endpoint_name).predictions(samples.tolist())
    if "xgboost" in str(notebook):
        # kserve-xgbserver, the runtime the manifest names, answers the booster's output.
        import numpy as np

        expected = objects["model"].predict_proba(features)[:, 1]
        np.testing.assert_allclose(answers, expected, rtol=1e-6, atol=1e-6)
    else:
        assert answers == objects["model"].predict(features).tolist()

    # KFP spells metric names with dashes.
    metrics = step_metrics(root)
    assert metrics["accuracy"] > 0.8
    assert metrics["smoke-p50-ms"] > 0
    # What the steps recorded is in this home's MLMD, snapshotted.
    recorded = {a.kind: a for a in list_artifacts()}
    assert recorded["model"].snapshot_uri
    if objects["scaler"] is not None:
        assert recorded["transformer"].snapshot_uri


def load_marshalled(root: Path, name: str) -> Any:
    """A variable a step marshalled as ``<name>_output_artifact``, loaded with Kale's marshal."""
    from kale import marshal

    for path in sorted(root.rglob(f"{name}_output_artifact")):
        output = json.loads((path.parent / "executor_output.json").read_text())
        artifact = output["artifacts"][f"{name}_output_artifact"]["artifacts"][0]
        marshal_name = Path(artifact["metadata"]["marshal_path"]).name
        data_dir = path.parent / f"unmarshal-{name}"
        data_dir.mkdir(exist_ok=True)
        shutil.copyfile(path, data_dir / marshal_name)
        marshal.set_data_dir(str(data_dir))
        return marshal.load(f"{name}_artifact")
    return None


def step_metrics(root: Path) -> dict[str, float]:
    """Every pipeline metric the steps logged (Kale's ``pipeline-metrics`` cell)."""
    metrics: dict[str, float] = {}
    for path in root.rglob("executor_output.json"):
        output = json.loads(path.read_text())
        for artifact in (
            output.get("artifacts", {}).get("kale_metrics_artifact", {}).get("artifacts", [])
        ):
            metrics.update(artifact.get("metadata", {}))
    return metrics
