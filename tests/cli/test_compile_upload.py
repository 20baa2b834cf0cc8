"""``compile --out DIR`` and ``upload --host URL`` (against a KFP API double on 127.0.0.1)."""

from __future__ import annotations

import pytest
import yaml

from tests.cli.conftest import assert_clean_error, run_script
from tests.cli.kfp_api_double import KfpApiDouble


def test_compile_writes_loadable_components_palette_and_pipelines(cli, tmp_path):
    from kfp import components

    from kfp_serve.components import all_components
    from kfp_serve.components.palette import palette_names
    from kfp_serve.pipelines import PIPELINES

    out = tmp_path / "compiled"
    outcome = cli("compile", "--out", str(out))
    assert outcome.exit_code == 0, outcome.stderr
    written = {line.strip() for line in outcome.stdout.splitlines() if line.strip()}
    names = set(all_components())
    component_files = {p.stem: p for p in (out / "components").glob("*.yaml")}
    palette_files = {p.stem: p for p in (out / "components" / "palette").glob("*.yaml")}
    pipeline_files = sorted((out / "pipelines").glob("*.yaml"))
    # Every component, and a palette file for each that the palette format can describe.
    assert set(component_files) == names and set(palette_files) == set(palette_names())
    assert len(pipeline_files) == len(PIPELINES)
    runtime = out / "runtimes" / "kfp-serve.yaml"
    assert written == {str(p) for p in [*component_files.values(), *palette_files.values(),
                                         *pipeline_files, runtime]}
    assert yaml.safe_load(runtime.read_text())["kind"] == "ClusterServingRuntime"
    for name, path in component_files.items():
        loaded = components.load_component_from_file(str(path))
        assert loaded.component_spec.implementation.container is not None, name
        assert loaded.component_spec.description, f"{name} has no description"
    for name, path in palette_files.items():
        palette = yaml.safe_load(path.read_text())
        assert "implementation" in palette and "container" in palette["implementation"], name
        assert components.load_component_from_file(str(path)).name
    display_names = set()
    for path in pipeline_files:
        spec = yaml.safe_load(path.read_text())
        assert spec["root"]["dag"]["tasks"], path
        display_names.add(spec["pipelineInfo"]["name"])
    assert display_names == {f"kfp-serve-{name}" for name in PIPELINES}


def test_compile_against_an_image_names_it_everywhere(tmp_path, monkeypatch):
    from kfp_serve.serving.constants import DEFAULT_IMAGE

    monkeypatch.delenv("KFP_SERVE_IMAGE", raising=False)
    image = "registry.example.com/ml/kfp-serve:7.1"
    out = tmp_path / "compiled"
    outcome = run_script("compile", "--out", str(out), "--image", image)
    assert outcome.exit_code == 0, outcome.stderr
    files = sorted(out.rglob("*.yaml"))
    assert {p.relative_to(out).parts[0] for p in files} == {"components", "pipelines", "runtimes"}
    for path in files:
        text = path.read_text()
        assert DEFAULT_IMAGE not in text, path
    runtime = yaml.safe_load((out / "runtimes" / "kfp-serve.yaml").read_text())
    assert runtime["spec"]["containers"][0]["image"] == image
    palette = yaml.safe_load((out / "components" / "palette" / "train.yaml").read_text())
    assert palette["implementation"]["container"]["image"] == image
    pipeline = yaml.safe_load((out / "pipelines" / "xgboost.yaml").read_text())
    images = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert images == {image}


@pytest.fixture
def kfp_context(monkeypatch, tmp_path):
    """Keep kfp.Client away from the user's ~/.config/kfp/context.json."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))


def _versions(api: KfpApiDouble) -> dict[str, list[str]]:
    return {f"{p.display_name}@{p.namespace}": [v.name for v in p.versions]
            for p in api.pipelines.values()}


def test_upload_creates_then_adds_versions(cli, kfp_context):
    from kfp import components

    from kfp_serve.pipelines.upload import upload_pipeline

    with KfpApiDouble() as api:
        first = cli("upload", "--host", api.url, "--pipeline", "xgboost")
        assert first.exit_code == 0, first.stderr
        assert "uploaded 'kfp-serve-xgboost' version 'kfp-serve-xgboost-" in first.stdout
        [pipeline] = api.pipelines.values()
        assert [v.name for v in pipeline.versions] == [
            first.stdout.split(" version '")[1].split("'")[0]]

        second = cli("upload", "--host", api.url, "--pipeline", "xgboost")
        assert second.exit_code == 0, second.stderr
        assert len(api.pipelines) == 1, "a second pipeline instead of a new version"
        assert len(pipeline.versions) == 2
        assert f"(id {pipeline.id})" in first.stdout and f"(id {pipeline.id})" in second.stdout

        # A named version, reported with its server ids by the library call.
        result = upload_pipeline("xgboost", host=api.url, version="v3")
        assert result == {"name": "kfp-serve-xgboost", "version": "v3", "id": pipeline.id,
                          "version_id": pipeline.versions[-1].id, "created": False}
        # The same name again is refused with what to do instead.
        assert_clean_error(
            cli("upload", "--host", api.url, "--pipeline", "xgboost", "--version", "v3"),
            "already has a version named 'v3'", "choose another version name",
        )
        assert len(pipeline.versions) == 3

        # What the server holds is a compiled pipeline: it loads back with kfp.
        package = pipeline.versions[0].package
        spec = yaml.safe_load(package)
        assert spec["pipelineInfo"]["name"] == "kfp-serve-xgboost"
        assert spec["schemaVersion"] and spec["sdkVersion"].startswith("kfp-")
        loaded = components.load_component_from_text(package.decode())
        assert "endpoint_name" in loaded.component_spec.inputs
        # The sklearn pipeline is a separate pipeline.
        assert cli("upload", "--host", api.url).exit_code == 0
        assert set(_versions(api)) == {"kfp-serve-xgboost@", "kfp-serve-sklearn-transformer@"}


def test_upload_again_into_a_namespace_adds_a_version(cli, kfp_context):
    """Multi-user KFP: the pipeline lives in the profile namespace, where the second upload
    must find it (a lookup without the namespace sees shared pipelines only)."""
    with KfpApiDouble(multi_user=True) as api:
        for _ in range(2):
            outcome = cli("upload", "--host", api.url, "--pipeline", "xgboost",
                          "--namespace", "team-a")
            assert outcome.exit_code == 0, outcome.stderr
        [(where, versions)] = _versions(api).items()
        assert where == "kfp-serve-xgboost@team-a"
        assert len(versions) == 2


def test_a_refused_first_version_leaves_no_empty_pipeline(kfp_context, monkeypatch):
    from kfp_serve.pipelines import upload
    from kfp_serve.pipelines.upload import UploadError, upload_pipeline

    real = upload.compile_pipeline

    def broken(name, path, options=None):
        real(name, path, options).write_text("pipelineInfo: {name: x}\n")  # no root
        return path

    monkeypatch.setattr(upload, "compile_pipeline", broken)
    with KfpApiDouble() as api:
        with pytest.raises(UploadError, match="refused the upload \\(HTTP 400: .*root"):
            upload_pipeline("xgboost", host=api.url)
        assert api.pipelines == {}
