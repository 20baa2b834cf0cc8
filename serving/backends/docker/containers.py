"""The Docker engine side of the Docker backend: run, check, stop and read containers.

The only module that talks to the engine (through the ``docker`` SDK, which kfp.local uses too).
A container is recorded like a process (:class:`..local.registry.ProcessRecord`, with its id in
``container`` and ``docker:NAME`` as its log), so the local backend's supervisor hands records
of containers to :func:`alive`, :func:`stop` and :func:`log_tail` here: whichever process reads
the shared endpoint registry (the CLI, a notebook, a pipeline step) can check and stop them.

Every container and volume made here carries :data:`LABEL_HOME` (the ``KFP_SERVE_HOME`` whose
registry names it), so a test, or a person, finds what one home left behind by label.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kfp_serve.retry import wait_until
from kfp_serve.serving.constants import (
    DOCKER_STOCK_RUNTIME_ENV,
    DOMAIN,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from kfp_serve.serving.errors import ServingError

#: Labels on every container and volume of the Docker backend.
LABEL_HOME = f"{DOMAIN}/home"
LABEL_ENDPOINT = f"{DOMAIN}/endpoint"
LABEL_REVISION = f"{DOMAIN}/revision"
LABEL_ROLE = f"{DOMAIN}/role"
#: Where the engine is when DOCKER_HOST is not set.
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
#: How to start an engine, for the error that says none answers.
START_ENGINE = "start one with `sudo bash .ci/docker-engine` (or `sudo systemctl start docker`)"
#: Seconds an engine call may take (a busy engine on a loaded machine is slow, not dead).
ENGINE_TIMEOUT = 120

_client_lock = threading.Lock()
_client: Any = None


class Recorded(Protocol):
    """What the registry records of a container (see ProcessRecord)."""

    container: str
    log: str


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE


def client() -> Any:
    """The process's engine client (one, reused); ServingError says how to start an engine."""
    global _client
    with _client_lock:
        if _client is not None:
            return _client
        try:
            import docker
            from docker.errors import DockerException
        except ImportError as e:  # pragma: no cover - a dependency of kfp-serve
            raise ServingError(
                "the Docker backend needs the docker Python SDK: pip install docker"
            ) from e
        try:
            made = docker.from_env(timeout=ENGINE_TIMEOUT)
            made.ping()
        except DockerException as e:
            raise ServingError(
                f"KFP_SERVE_BACKEND=docker: no Docker engine answers at {engine_address()}: "
                f"{START_ENGINE}"
            ) from e
        _client = made
        return made


def check_image(image: str, what: str) -> None:
    """Refuse an image the engine does not have (nothing can be pulled on such machines, and a
    pull would hide a typo for minutes): the error says how to build it."""
    from docker.errors import ImageNotFound

    try:
        client().images.get(image)
    except ImageNotFound:
        if "kfp-serve" in image:
            fix = (
                f"build it with `make image IMAGE={image}` (machines without registry access: "
                "`make base-image-debian image BASE_IMAGE=kfp-serve-base:bookworm`)"
            )
        else:
            fix = (
                f"pull it (`docker pull {image}`), or, for KServe's stock runtimes, run them "
                f"with kfp-serve's: {DOCKER_STOCK_RUNTIME_ENV}=kfp-serve"
            )
        raise ServingError(
            f"{what}: the image {image!r} is not in the Docker engine: {fix}"
        ) from None


@functools.cache
def limits_enforced() -> list[str]:
    """The kinds of resource limit this engine reports it cannot enforce (empty: all).

    Asked once per process: every status reads it, and an engine's cgroup support does not
    change while it runs."""
    info = client().info()
    missing = []
    if not info.get("MemoryLimit", True):
        missing.append("memory")
    if not (info.get("CpuCfsQuota", True) and info.get("CpuCfsPeriod", True)):
        missing.append("cpu")
    return missing


# --------------------------------------------------------------------------------------------
# Run


@dataclass
class Mount:
    """A bind mount (``source`` a host path) or a named volume mounted at ``target``."""

    source: str
    target: str
    read_only: bool = True
    volume: bool = False

    def sdk(self) -> Any:
        from docker.types import Mount as SdkMount

        return SdkMount(
            target=self.target,
            source=self.source,
            type="volume" if self.volume else "bind",
            read_only=self.read_only,
        )


@dataclass
class ContainerSpec:
    """One container to run, in the engine's terms (see :mod:`.spec` for how it is derived)."""

    name: str
    image: str
    #: Kubernetes ``command`` (replaces the image's ENTRYPOINT) and ``args`` (its CMD).
    entrypoint: list[str] | None
    args: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    #: Engine limits mapped from the manifest's resources (docker SDK keyword arguments).
    limits: dict[str, Any] = field(default_factory=dict)
    #: Mapped from the securityContext (user, cap_drop, security_opt, privileged, read_only).
    security: dict[str, Any] = field(default_factory=dict)
    #: "host" for the router, whose pid must be the one the host sees (the registry records it).
    pid_mode: str | None = None
    working_dir: str | None = None
    #: securityContext.runAsNonRoot without a runAsUser: the image's own user must not be root.
    non_root: bool = False

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``client.containers.run`` for this container (detached)."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": self.args,
            "name": self.name,
            "environment": self.environment,
            "labels": self.labels,
            "mounts": [m.sdk() for m in self.mounts],
            # This engine's containers share the host network (no bridge on these machines);
            # every server binds 127.0.0.1, so nothing is reachable from another machine.
            "network_mode": "host",
            "detach": True,
            **self.limits,
            **self.security,
        }
        if self.entrypoint is not None:
            kwargs["entrypoint"] = self.entrypoint
        if self.pid_mode:
            kwargs["pid_mode"] = self.pid_mode
        if self.working_dir:
            kwargs["working_dir"] = self.working_dir
        return kwargs


def run(spec: ContainerSpec) -> tuple[str, int]:
    """Start ``spec``'s container, detached; its id and main pid (as the host sees it)."""
    from docker.errors import APIError

    check_image(spec.image, f"container {spec.name}")
    if spec.non_root:
        user = client().images.get(spec.image).attrs.get("Config", {}).get("User") or ""
        if user.split(":")[0] in ("", "0", "root"):
            # What the kubelet refuses (CreateContainerConfigError), refused here as well.
            raise ServingError(
                f"container {spec.name}: its securityContext has runAsNonRoot but image "
                f"{spec.image!r} runs as root: set securityContext.runAsUser (e.g. 1000)"
            )
    try:
        container = client().containers.run(**spec.run_kwargs())
    except APIError as e:
        with contextlib.suppress(Exception):
            client().containers.get(spec.name).remove(force=True)
        raise ServingError(
            f"the Docker engine refused to start container {spec.name}: {e.explanation or e}"
        ) from e
    container.reload()
    return container.id, int(container.attrs["State"].get("Pid") or 0)


def run_to_completion(spec: ContainerSpec, timeout: float) -> None:
    """Run ``spec`` until it exits (an init container); ServingError with its log tail unless
    it exits 0. The container is removed either way."""
    container_id, _ = run(spec)
    container = client().containers.get(container_id)
    try:
        try:
            result = container.wait(timeout=timeout)
        except Exception as e:  # requests' ReadTimeout, or the engine going away
            raise ServingError(
                f"container {spec.name} did not finish within {timeout:.0f} s; it printed:\n"
                f"{log_tail(spec.name)}"
            ) from e
        code = int(result.get("StatusCode", -1))
        if code != 0:
            raise ServingError(
                f"container {spec.name} exited with code {code}; its log ends with:\n"
                f"{log_tail(spec.name)}"
            )
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def create_volume(name: str, labels: dict[str, str]) -> str:
    """A new named volume (removed with the container that mounts it, see :func:`stop`)."""
    client().volumes.create(name=name, labels=labels)
    return name


# --------------------------------------------------------------------------------------------
# Check, read, stop


def _get(container_id: str) -> Any | None:
    from docker.errors import NotFound

    try:
        return client().containers.get(container_id)
    except NotFound:
        return None


def alive(record: Recorded) -> bool:
    """True while the container runs (removed, exited or dead: False)."""
    container = _get(record.container)
    return container is not None and container.status == "running"


def exit_code(record: Recorded) -> int | None:
    """The exit code of a container that has exited, else None."""
    container = _get(record.container)
    if container is None or container.status == "running":
        return None
    return int(container.attrs["State"].get("ExitCode", -1))


def log_tail(name: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a container's output ('' when it is gone)."""
    container = _get(name)
    if container is None:
        return ""
    try:
        return container.logs(tail=lines).decode("utf-8", errors="replace").rstrip("\n")
    except Exception:  # removed meanwhile
        return ""


def stop(records: Iterable[Recorded], grace: float) -> None:
    """Stop the containers together (SIGTERM, SIGKILL after ``grace``), then remove them and
    the volumes they had (a revision's storage-initializer volume goes with its server)."""
    containers = [c for c in (_get(r.container) for r in records) if c is not None]
    for c in containers:
        with contextlib.suppress(Exception):
            c.kill(signal="SIGTERM")

    def all_stopped() -> bool:
        for c in containers:
            with contextlib.suppress(Exception):  # removed meanwhile: stopped
                c.reload()
                if c.status == "running":
                    return False
        return True

    with contextlib.suppress(TimeoutError):  # what still runs is killed by the removal
        wait_until(all_stopped, deadline=grace, interval=0.05, describe="the containers stopping")
    for c in containers:
        volumes = [m["Name"] for m in c.attrs.get("Mounts", []) if m.get("Type") == "volume"]
        with contextlib.suppress(Exception):
            c.remove(force=True)  # SIGKILL if it still runs
        for volume in volumes:
            remove_volume(volume)


def remove_volume(name: str) -> None:
    """Remove a volume of ours (labelled by kfp-serve), if it exists."""
    from docker.errors import NotFound

    try:
        volume = client().volumes.get(name)
    except NotFound:
        return
    if (volume.attrs.get("Labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY:
        with contextlib.suppress(Exception):
            volume.remove(force=True)


def left_behind(home: str) -> list[str]:
    """Names of containers and volumes labelled with ``home`` (what a stop should have
    removed)."""
    flt = {"label": f"{LABEL_HOME}={home}"}
    names = [c.name for c in client().containers.list(all=True, filters=flt)]
    names += [v.name for v in client().volumes.list(filters=flt)]
    return names
