"""Container tests: the kfp-serve image in a real Docker engine, run through kfp.local.DockerRunner.

They need an engine and the built image (``make image``). Without them the tests here do not
run, and the session prints one line saying so and how to run them — unless
``KFP_SERVE_REQUIRE_DOCKER=1`` (``.ci/run`` sets it): then each of them fails with that line, so
a CI machine without an engine cannot pass by leaving them out.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kfp_serve.serving.constants import DEFAULT_IMAGE, DOCKER_STOCK_RUNTIME_ENV, IMAGE_ENV

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Set to 1 to make a missing engine or image fail these tests instead of leaving them out.
REQUIRE_ENV = "KFP_SERVE_REQUIRE_DOCKER"
#: Label on every container these tests start, so a left-over one can be found.
TEST_LABEL = "kfp-serve.test-session"
HOW_TO_RUN = "run them with `bash .ci/run`, or start an engine, `make image`, then `make test`"

_SESSION = uuid.uuid4().hex[:12]
#: Where a step container finds the engine.
ENGINE_SOCKET = "/var/run/docker.sock"


def engine_socket() -> str:
    """The host path of the engine's socket (DOCKER_HOST when it names one)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else ENGINE_SOCKET
_problem: str | None = None
_left_out = 0


def image_under_test() -> str:
    """The image the components are compiled against: ``KFP_SERVE_IMAGE``, else the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def engine_problem(image: str) -> str | None:
    """One line saying why container tests cannot run here (and the fix), or None."""
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError:
        return "the docker Python SDK is missing: `make install`"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except DockerException:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return (f"no Docker engine answers at {where}: start one with `sudo bash "
                ".ci/docker-engine` (installs Debian's docker.io and starts dockerd)")
    try:
        client.images.get(image)
    except ImageNotFound:
        return (f"the image {image!r} is not in the Docker engine: build it with `make image` "
                "(no registry access: `make base-image-debian image "
                "BASE_IMAGE=kfp-serve-base:bookworm`)")
    finally:
        client.close()
    return None


def _is_container_test(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the container tests out when nothing can run them (and REQUIRE_ENV is not 1)."""
    global _problem, _left_out
    mine = [item for item in items if _is_container_test(item)]
    if not mine:
        return
    _problem = engine_problem(image_under_test())
    if _problem is None or os.environ.get(REQUIRE_ENV) == "1":
        return
    _left_out = len(mine)
    config.hook.pytest_deselected(items=mine)
    items[:] = [item for item in items if not _is_container_test(item)]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The one line that says the container tests did not run, why, and how to run them."""
    if _left_out:
        terminalreporter.write_line(
            f"container tests did not run ({_left_out} left out): {_problem}; {HOW_TO_RUN}",
            yellow=True,
        )


@pytest.fixture(scope="session")
def image() -> str:
    """The built image's name; with REQUIRE_ENV=1 and no engine or image, the test fails here."""
    if _problem is not None:
        pytest.fail(f"{REQUIRE_ENV}=1 but {_problem}", pytrace=False)
    return image_under_test()


@pytest.fixture(scope="session")
def docker_client(image: str) -> Iterator[object]:
    """A Docker SDK client; at the end, fails if a container of this session is left behind."""
    import docker

    client = docker.from_env(timeout=60)
    yield client
    left = client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={_SESSION}"})
    for container in left:
        container.remove(force=True)
    client.close()
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture(scope="session")
def compiled(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every component, palette file and pipeline compiled against the image under test."""
    out = tmp_path_factory.mktemp("compiled")
    subprocess.run(
        [sys.executable, "-m", "kfp_serve.build", "--out", str(out)],
        check=True, env={**os.environ, IMAGE_ENV: image}, capture_output=True,
    )
    return out


@dataclass
class ContainerRun:
    """A kfp-serve home shared by this process and the containers, and how to run in them."""

    home: Path
    pipeline_root: Path
    image: str

    def runner(self) -> object:
        """A DockerRunner: host network (this VM's engine has no bridge), host pid namespace
        (the pids steps record in the endpoint registry mean the same here and there), the home
        mounted at the same path, the engine's socket (the serve step starts the endpoint's
        containers beside its own), and nothing downloadable (no index for a step's pip)."""
        import docker
        import kfp.local

        return kfp.local.DockerRunner(
            network_mode="host",
            pid_mode="host",
            environment=self.environment(),
            mounts=[
                docker.types.Mount(target=str(self.home), source=str(self.home), type="bind"),
                docker.types.Mount(target=ENGINE_SOCKET, source=engine_socket(), type="bind"),
            ],
            labels={TEST_LABEL: _SESSION},
        )

    def environment(self) -> dict[str, str]:
        """The variables every step container gets."""
        return {
            "KFP_SERVE_HOME": str(self.home),
            # Endpoints as the containers KServe would run, in the image under test; the
            # pipelines name KServe's stock runtimes, whose images cannot be pulled here.
            "KFP_SERVE_BACKEND": "docker",
            IMAGE_ENV: self.image,
            DOCKER_STOCK_RUNTIME_ENV: "kfp-serve",
            "PIP_NO_INDEX": "1",
        }

    def init(self) -> None:
        """Point kfp.local at the image (every step) and this run's pipeline root."""
        import kfp.local

        kfp.local.init(runner=self.runner(), pipeline_root=str(self.pipeline_root),
                       raise_on_error=False)


@pytest.fixture
def container_run(
    image: str, docker_client: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContainerRun]:
    """A fresh shared home (this process uses it too); endpoints served in it stopped after."""
    home = (tmp_path / "home").resolve()
    home.mkdir()
    run = ContainerRun(home=home, pipeline_root=home / "pipeline-runs", image=image)
    for name, value in run.environment().items():
        if name != "PIP_NO_INDEX":
            monkeypatch.setenv(name, value)
    for name in ("KFP_SERVE_MLMD", "KFP_SERVE_SNAPSHOT_STORE", "METADATA_GRPC_SERVICE_HOST",
                 "METADATA_GRPC_SERVICE_PORT", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    yield run
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.backends.docker import containers
    from kfp_serve.serving.runtime import warm_pool

    backend = get_backend("docker")
    for status in backend.list():
        backend.delete(status.name)
    warm_pool.stop()
    left = containers.left_behind(str(home))
    assert not left, f"containers or volumes of endpoints left behind: {left}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_MISSING_OUTPUT = re.compile(r"from task '([^']+)', but task '[^']+' not found")
#: The status given to a task whose container failed but that kfp.local reported as SUCCESS.
LOST_FAILURE = "FAILURE (exit status lost by kfp.local)"


def task_statuses(log: str) -> dict[str, str]:
    """Each task's status in a kfp.local log, corrected for kfp.local's exit-status race.

    kfp.local's DockerRunner runs containers with ``auto_remove=True`` and takes a container
    that is already gone when it asks for the exit code as a success (measured here: 4 of 30
    containers that exited 3 came back as 0). Every component of ours declares outputs, and
    a step's executor writes them only when it completes, so "SUCCESS" followed by "has no
    outputs" is such a lost failure.
    """
    statuses = dict(_FINISHED.findall(log))
    for name, status in statuses.items():
        if status == "SUCCESS" and f"Task '{name}' has no outputs" in log:
            statuses[name] = LOST_FAILURE
    return statuses


@dataclass
class RunResult:
    """What a kfp.local run in containers did: its task, each task's status, its whole log."""

    task: Any
    statuses: dict[str, str]
    log: str

    def failed(self) -> list[str]:
        """The tasks that did not succeed."""
        return [name for name, status in self.statuses.items() if status != "SUCCESS"]


def run_logged(component: Any, **arguments: Any) -> RunResult:
    """Run ``component`` (a pipeline or a single component) under the kfp.local set-up in force,
    capturing the log kfp.local prints (each container's output and each task's status)."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        # Ours is a Python image without "python" in its name; the warning says nothing here.
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
        try:
            task = component(**arguments)
        except Exception as e:
            log = _ANSI.sub("", buffer.getvalue())
            statuses = task_statuses(log)
            missing = _MISSING_OUTPUT.search(str(e))
            if missing and statuses.get(missing.group(1)) == LOST_FAILURE:
                # A lost failure whose output is a pipeline output: kfp.local stops collecting
                # the outputs there, as it does for a task that failed, after the run is over.
                return RunResult(task=None, statuses=statuses, log=log)
            # kfp.local fails this way when a failed task's output is a pipeline output.
            raise AssertionError(f"{e}\n--- kfp.local log (end) ---\n{log[-4000:]}") from e
    log = _ANSI.sub("", buffer.getvalue())
    return RunResult(task=task, statuses=task_statuses(log), log=log)
