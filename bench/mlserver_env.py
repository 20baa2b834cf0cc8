"""MLServer 1.7, the serving benchmark's peer: its own venv, its config, and its process.

MLServer pins libraries that clash with kfp-serve's stack, so it lives in its own venv,
``.venv-mlserver`` at the repo root, created on first use with the same commands ``make bench``
runs (:data:`INSTALL_COMMANDS`). The server runs the way the issue prescribes:

- ``parallel_workers: 0``: inference in the server process; MLServer's default worker pool
  crashes with uvloop 0.23, and one process is the fair match for our one-worker runtime;
- HTTP on 127.0.0.1 only; gRPC (MLServer always starts it) on a free loopback port;
- metrics server off (``metrics_endpoint: null``) and ``debug: false`` (no access log line per
  request): the peer's leanest reasonable production settings, so a ratio is not flattered by
  a peer left in debug mode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-mlserver"
MLSERVER_SPEC = "mlserver==1.7.*"
RUNTIMES = ("mlserver-sklearn", "mlserver-xgboost")
IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
}
#: What creates the venv; the Makefile's bench target runs the same (see module docstring).
INSTALL_COMMANDS: list[list[str]] = [
    ["python3.11", "-m", "venv", str(VENV)],
    [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
    [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", MLSERVER_SPEC, *RUNTIMES],
]


def mlserver_bin() -> Path:
    """The ``mlserver`` console script inside the venv."""
    return VENV / "bin" / "mlserver"


def _ignore_in_git() -> None:
    # The venv sits inside the work tree (1+ GB): a `git add -A` must never pick it up, whatever
    # the repo's own .gitignore says. Python 3.13's venv writes the same file for this reason.
    if VENV.is_dir():
        marker = VENV / ".gitignore"
        if not marker.exists():
            marker.write_text("# created by bench/mlserver_env.py: keep this venv out of git\n*\n")


def installed() -> bool:
    """True when the venv holds MLServer and both runtimes (an import check, ~1 s)."""
    python = VENV / "bin" / "python"
    if not python.exists() or not mlserver_bin().exists():
        return False
    probe = subprocess.run(  # noqa: S603 - fixed argv
        [str(python), "-c", "import mlserver, mlserver_sklearn, mlserver_xgboost"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return probe.returncode == 0


def ensure_venv(log=print) -> Path:
    """Create ``.venv-mlserver`` with MLServer 1.7 and its runtimes unless it is already there.

    Args:
        log: Progress sink (one line per step); creation takes a minute or two.

    Returns:
        The ``mlserver`` executable.

    Raises:
        RuntimeError: A step failed; the message carries its output tail.
    """
    _ignore_in_git()
    if installed():
        return mlserver_bin()
    interpreter = shutil.which("python3.11") or (
        sys.executable if sys.version_info[:2] == (3, 11) else None
    )
    if interpreter is None:
        raise RuntimeError("creating the MLServer venv needs python3.11 on PATH")
    commands = [list(c) for c in INSTALL_COMMANDS]
    commands[0][0] = interpreter
    for cmd in commands:
        log(f"mlserver venv: {' '.join(cmd)}")
        done = subprocess.run(  # noqa: S603 - fixed argv
            cmd, capture_output=True, text=True, timeout=1800, check=False
        )
        _ignore_in_git()  # right after `venv` creates the directory, before pip fills it
        if done.returncode != 0:
            tail = (done.stderr or done.stdout)[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {tail}")
    if not installed():
        raise RuntimeError(f"{VENV} was created but does not import mlserver and its runtimes")
    return mlserver_bin()


@dataclass
class ModelEntry:
    """One model MLServer serves: its name, framework and the model file to load."""

    name: str
    framework: str
    model_file: Path


def write_repository(
    root: Path, models: list[ModelEntry], *, http_port: int, grpc_port: int
) -> Path:
    """Write MLServer's settings.json and one model-settings.json per model under ``root``.

    Returns:
        ``root`` (what ``mlserver start`` takes).
    """
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "parallel_workers": 0,
        "metrics_endpoint": None,
        "debug": False,
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for entry in models:
        model_dir = root / entry.name
        model_dir.mkdir(exist_ok=True)
        model_settings = {
            "name": entry.name,
            "implementation": IMPLEMENTATIONS[entry.framework],
            "parameters": {"uri": str(entry.model_file)},
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return root


def start(
    root: Path, log_path: Path, *, cpus: str | None = None
) -> subprocess.Popen:
    """Start ``mlserver start ROOT`` detached, output to ``log_path``; does not wait.

    Args:
        root: Directory written by :func:`write_repository`.
        log_path: File for the server's output.
        cpus: ``taskset`` CPU list for the server, e.g. ``"0"``.
    """
    cmd = [str(mlserver_bin()), "start", str(root)]
    if cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - fixed argv
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,  # own process group: stopped as a whole, never orphaned
        )
