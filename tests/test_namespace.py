"""One import namespace: the distribution installs ``kfp_serve`` and nothing else at the top, so
a user's own ``serving/``, ``components/`` or ``pipelines/`` package and ours never shadow each
other."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED = ("artifacts", "serving", "components", "pipelines", "kale_steps")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = out.glob("kfp_serve-*.whl")
    return path


def run_python(code: str, cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_wheel_holds_one_top_level_package_with_its_data_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"kfp_serve", "kfp_serve-0.1.0.dist-info"}
    for data in ("kfp_serve/serving/runtimes/kfp-serve.yaml", "kfp_serve/components/train.yaml",
                 "kfp_serve/components/palette/serve.yaml", "kfp_serve/pipelines/xgboost.yaml",
                 "kfp_serve/kale_steps/examples/sklearn_wine.ipynb"):
        assert data in names


def test_every_package_folder_is_mapped_into_the_namespace():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"kfp_serve"} | {
        "kfp_serve." + ".".join(init.parent.relative_to(REPO).parts)
        for top in MAPPED for init in (REPO / top).rglob("__init__.py")
    }
    declared = set(config["packages"])
    assert on_disk <= declared, f"add to [tool.setuptools] packages: {sorted(on_disk - declared)}"
    for package in declared - on_disk:  # data-only folders
        top, *rest = package.split(".")[1:]
        root = REPO / top if top in MAPPED else REPO / "kfp_serve" / top
        assert (root / Path(*rest)).is_dir(), package


def test_installed_distribution_imports_only_under_kfp_serve(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    modules = [p.name for p in target.iterdir() if not p.name.endswith(".dist-info")]
    assert sorted(modules) == ["bin", "kfp_serve"]  # bin/: the kfp-serve console script
    empty = tmp_path / "cwd"
    empty.mkdir()
    for name in MAPPED:
        gone = run_python(f"import {name}", empty, target)
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, (name, gone.stderr)
    found = run_python(
        "import kfp_serve.serving.runtime.predictor, kfp_serve.components.entry, "
        "kfp_serve.kale_steps, kfp_serve.pipelines; print(kfp_serve.serving.__file__)",
        empty, target)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().startswith(str(target / "kfp_serve" / "serving"))


def test_public_api_is_lazy_and_listed():
    code = (
        "import sys, kfp_serve\n"
        "assert {'Model', 'Transformer', 'ServeConfig', 'serve', 'Endpoint'} "
        "<= set(dir(kfp_serve))\n"
        "heavy = [m for m in ('kfp', 'kserve', 'sklearn', 'ml_metadata') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import kfp_serve.serving as s, kfp_serve.artifacts as a, kfp_serve.components as c\n"
        "assert 'serve' in dir(s) and 'Model' in dir(a) and 'train' in dir(c)\n"
        "from kfp_serve import Model, Transformer, ServeConfig, serve, Endpoint\n"
        "assert serve.__module__ == 'kfp_serve.serving.deploy'\n"
    )
    result = run_python(code, REPO)
    assert result.returncode == 0, result.stderr


def test_quick_start_works_beside_the_users_own_packages(tmp_path):
    """The README quick start, run from a project with its own serving/, components/ and
    pipelines/ packages: ours and theirs both import."""
    project = tmp_path / "project"
    for name in ("serving", "components", "pipelines"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start (Python)\n\n```python\n", 1)[1].split("```", 1)[0]
    code = (
        "import serving, components, pipelines\n"
        + quick_start
        + "assert serving.OWNER == 'user serving' and pipelines.OWNER == 'user pipelines'\n"
        "from kfp_serve.serving.backends.local import LocalBackend\n"
        "LocalBackend(progress=False).delete('iris')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KFP_SERVE_HOME": str(tmp_path / "h"),
           "KFP_SERVE_BACKEND": "local", "KFP_SERVE_WARM_POOL": "0", "PYTHONPATH": str(project)}
    result = subprocess.run([sys.executable, "-c", code], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'predictions': [0]" in result.stdout
