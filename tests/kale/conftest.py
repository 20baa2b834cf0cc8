"""Fixtures for the Kale tests: an isolated kfp-serve home, a kernel on this venv's Python."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "kale_steps" / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))

# Environment that would point kfp-serve at a cluster or a shared store; each test starts from
# the embedded defaults instead.
_CLUSTER_ENV = (
    "KFP_SERVE_MLMD",
    "KFP_SERVE_SNAPSHOT_STORE",
    "METADATA_GRPC_SERVICE_HOST",
    "METADATA_GRPC_SERVICE_PORT",
    "KUBERNETES_SERVICE_HOST",
)


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JUPYTER_PATH whose ``python3`` kernel is this interpreter.

    nbclient and Kale's step runner both start the kernel named ``python3``; a stock kernelspec
    says ``python``, which a PATH could resolve to another interpreter without kfp-serve.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (kfp-serve tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


@pytest.fixture
def kfp_serve_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jupyter_path: Path
) -> Iterator[Path]:
    """KFP_SERVE_HOME in tmp_path with the local backend; stops every endpoint it served."""
    home = tmp_path / "kfp-serve-home"
    home.mkdir()
    monkeypatch.setenv("KFP_SERVE_HOME", str(home))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "local")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    for name in _CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    try:
        yield home
    finally:
        stop_all_endpoints()


def stop_all_endpoints() -> None:
    """Stop every endpoint of the current KFP_SERVE_HOME (each test has its own)."""
    try:
        from kfp_serve.serving.backends.base import get_backend
    except ImportError:  # the serving layer is not there yet: nothing can have been served
        return
    backend = get_backend("local")
    for status in backend.list():
        backend.delete(status.name)


def notebook_ids() -> list[str]:
    """Readable pytest ids for the example notebooks."""
    return [path.stem for path in NOTEBOOKS]


def venv_env(**extra: str) -> dict[str, str]:
    """The current environment for a subprocess, with this venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
