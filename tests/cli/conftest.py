"""Fixtures for the CLI tests: a private KFP_SERVE_HOME, a CLI runner, artifacts in MLMD."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
#: The installed console script, next to the interpreter running the tests.
KFP_SERVE = str(Path(sys.executable).with_name("kfp-serve"))
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ENV_OVERRIDES = ("KFP_SERVE_MLMD", "KFP_SERVE_SNAPSHOT_STORE", "METADATA_GRPC_SERVICE_HOST",
                  "KFP_SERVE_IMAGE")


@pytest.fixture(scope="package", autouse=True)
def kfp_serve_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """KFP_SERVE_HOME and the local backend for every CLI test (in-process and subprocesses);
    every endpoint still running at the end is stopped."""
    home = tmp_path_factory.mktemp("cli-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFP_SERVE_HOME", str(home))
        mp.setenv("KFP_SERVE_BACKEND", "local")
        # Rich output as a pipe gets it: no colours.
        mp.setenv("NO_COLOR", "1")
        for name in _ENV_OVERRIDES:
            mp.delenv(name, raising=False)
        yield home
        from kfp_serve.serving.backends.local import LocalBackend

        backend = LocalBackend(progress=False, stop_grace=2.0)
        for status in backend.list():
            backend.delete(status.name)


@dataclass
class Outcome:
    """What a command did: exit code and its two streams (ANSI codes removed)."""

    exit_code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


@pytest.fixture(scope="package")
def cli() -> Any:
    """``cli("models", "--kind", "model")`` runs the Typer app in-process.

    Exceptions are not caught by the runner: an error the CLI does not turn into a clean
    message fails the test with its traceback.
    """
    from kfp_serve.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> Outcome:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        return Outcome(result.exit_code, _plain(result.stdout), _plain(result.stderr))

    return invoke


def run_script(*args: str, timeout: float = 120.0) -> Outcome:
    """The real console script in a subprocess (inherits KFP_SERVE_HOME)."""
    proc = subprocess.run(
        [KFP_SERVE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    return Outcome(proc.returncode, _plain(proc.stdout), _plain(proc.stderr))


def assert_clean_error(outcome: Outcome, *fragments: str) -> str:
    """Exit code != 0, nothing on stdout, one ``error:`` line on stderr, at most one ``hint:``
    line after it; ``fragments`` are found in one of the two. Returns both, joined by "\n"."""
    assert outcome.exit_code != 0, outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = outcome.error_lines()
    assert 1 <= len(lines) <= 2, f"expected an error line and a hint, got:\n{outcome.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), lines[1]
        # A hint tells a CLI user what to type: a command or a flag, never Python.
        assert "=True" not in lines[1] and "()" not in lines[1], lines[1]
    text = "\n".join(lines)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert outcome.stdout.strip() == "", outcome.stdout
    return text


def last_error(outcome: Outcome) -> tuple[str, str]:
    """The ``error:`` and ``hint:`` lines a failed run ends with (progress lines come first)."""
    assert outcome.exit_code == 1, outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = outcome.error_lines()
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), lines[-3:]
    return lines[-2], lines[-1]


@pytest.fixture(scope="package")
def iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


@pytest.fixture(scope="package")
def iris_model(iris: Any) -> tuple[int, Any]:
    """A LogisticRegression on iris submitted to MLMD: (model id, fitted estimator)."""
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts
    X, y = iris
    est = LogisticRegression(max_iter=500).fit(X, y)
    model_id = artifacts.Model(
        model=est, name="cli-iris", version="1.0.0", author="cli-tests",
        description="iris for the CLI tests",
    ).submit_artifact()
    return model_id, est


@pytest.fixture(scope="package")
def iris_scaler(iris: Any) -> int:
    """A StandardScaler transformer submitted to MLMD: its id."""
    from sklearn.preprocessing import StandardScaler

    from kfp_serve import artifacts
    X, _ = iris
    return artifacts.Transformer(
        name="cli-scaler", transformer=StandardScaler().fit(X), version="1.0.0"
    ).submit_artifact()


def stop_quietly(name: str) -> None:
    """Stop endpoint ``name`` if it still exists (fixture teardown)."""
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.errors import ServingError

    try:
        LocalBackend(progress=False, stop_grace=2.0).delete(name)
    except ServingError:
        pass
