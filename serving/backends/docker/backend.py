"""The Docker serving backend: an InferenceService manifest run as the containers KServe would
create for it (``KFP_SERVE_BACKEND=docker``).

It is the local backend (:mod:`..local`) with containers instead of processes: the same plan,
registry, router, rollouts (the old revision keeps serving when a new one fails), canary
split, status and stop. Only :class:`ContainerServers` differs — how a revision's artifacts are
made ready and its servers started:

- ``file://`` snapshots and directories are verified on this side, then bind-mounted read-only
  at /mnt/models; ``s3://`` ones are downloaded into a new volume by the storage initializer
  (:mod:`.storage_init`, kserve-storage in the kfp-serve image), verified there, and mounted
  read-only;
- the predictor and transformer run from their runtime's / manifest's image (:mod:`.spec`);
- the router runs in the kfp-serve image too, so an endpoint outlives whoever applied it (a
  pipeline step's container, a notebook); it reads the registry through the home, bind-mounted
  at the same path. ``KFP_SERVE_HOME`` must therefore be a path the engine's host has (inside a
  step container: mounted from the host at the same path, as kfp.local does it).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

from kfp_serve.artifacts.home import HOME_ENV, state_dir
from kfp_serve.serving import constants
from kfp_serve.serving.backends.base import DOCKER, EndpointStatus
from kfp_serve.serving.backends.docker import containers
from kfp_serve.serving.backends.docker.containers import (
    LABEL_REVISION,
    LABEL_ROLE,
    ContainerSpec,
    Mount,
)
from kfp_serve.serving.backends.docker.spec import (
    base_labels,
    model_mount,
    predictor_args,
    server_specs,
    wanted_ports,
)
from kfp_serve.serving.backends.local import trained_models
from kfp_serve.serving.backends.local.backend import LocalBackend, backend_of
from kfp_serve.serving.backends.local.plan import Plan
from kfp_serve.serving.backends.local.plan import _flag as flag_value
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    ProcessRecord,
    RevisionRecord,
    registry_path,
)
from kfp_serve.serving.backends.local.rollout import revision_record
from kfp_serve.serving.backends.local.storage import resolve_storage
from kfp_serve.serving.backends.local.supervisor import CONTAINER_LOG_PREFIX
from kfp_serve.serving.constants import (
    LOOPBACK,
    PREDICTOR,
    STORAGE_URI_ENV,
    TRANSFORMER,
    UNIX_SOCKET_FLAG,
)
from kfp_serve.serving.runtime.launch import free_port

#: Seconds the storage initializer gets to download one artifact.
STORAGE_INIT_TIMEOUT = 600.0
#: Environment the storage initializer gets from this process: S3 credentials and endpoint.
STORAGE_ENV_PREFIXES = ("AWS_", "S3_")


def kfp_serve_image() -> str:
    """The image the router, the storage initializer and our runtime run in."""
    return os.environ.get(constants.IMAGE_ENV) or constants.DEFAULT_IMAGE


class ContainerServers:
    """An endpoint's servers as containers of the Docker engine (see the module docstring)."""

    backend = DOCKER

    def __init__(self, image: str | None = None) -> None:
        self.image = image or kfp_serve_image()

    # -- artifacts ----------------------------------------------------------------------------

    def prepare(self, plan: Plan) -> dict[str, Path | str]:
        containers.client()  # no engine: say so before anything else
        containers.check_image(self.image, f"endpoint {plan.name!r}")
        if plan.multi_model:
            # Models are staged into the endpoint's models directory as they load (the
            # container cannot see host paths), mounted as the server's model directory.
            return {PREDICTOR: trained_models.models_dir(plan.name)}
        artifacts: dict[str, Path | str] = {}
        uris = {PREDICTOR: plan.predictor.storage_uri}
        if plan.transformer is not None:
            uris[TRANSFORMER] = plan.transformer.storage_uri
        for role, uri in uris.items():
            if uri.startswith("s3://"):
                # Downloaded and verified by the storage initializer, in the volume it fills.
                _refuse_plain_s3(uri, role)
                artifacts[role] = uri
            else:
                artifacts[role] = resolve_storage(uri, field=_field(role))
        return artifacts

    def _storage_volume(self, uri: str, name: str, labels: dict[str, str]) -> Mount:
        """A new volume filled with ``uri`` by the storage initializer, verified."""
        volume = containers.create_volume(f"{name}-models", {**labels, LABEL_ROLE: "models"})
        env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}
        from kfp_serve.artifacts.snapshots.s3 import s3_endpoint

        endpoint = s3_endpoint()
        if endpoint:
            env.setdefault("AWS_ENDPOINT_URL", endpoint)
        init = ContainerSpec(
            name=f"{name}-storage-initializer",
            image=self.image,
            entrypoint=["python", "-m", "kfp_serve.serving.backends.docker.storage_init"],
            args=[uri, "/mnt/models"],
            environment=env,
            labels={**labels, LABEL_ROLE: "storage-initializer"},
            mounts=[Mount(source=volume, target="/mnt/models", read_only=False, volume=True)],
        )
        try:
            containers.run_to_completion(init, STORAGE_INIT_TIMEOUT)
        except BaseException:
            containers.remove_volume(volume)
            raise
        return model_mount(volume, volume=True)

    # -- start --------------------------------------------------------------------------------

    def start_router(
        self, name: str, port: int | None, grpc_port: int | None = None
    ) -> tuple[ProcessRecord, subprocess.Popen | None]:
        # Containers share the host's network here: the router binds its own ports, kept
        # from the previous router when they are free (the endpoint's addresses are stable).
        port = port if port and _free(port) else free_port()
        grpc_port = grpc_port if grpc_port and _free(grpc_port) else free_port()
        spec = ContainerSpec(
            name=f"kfp-serve-{name}-router-{secrets.token_hex(3)}",
            image=self.image,
            entrypoint=["python", "-m", constants.ROUTER_MODULE],
            args=[
                "--endpoint", name, "--registry", str(registry_path(name)),
                "--port", str(port), "--grpc-port", str(grpc_port),
            ],
            environment={
                HOME_ENV: str(state_dir()),
                **{k: v for k, v in os.environ.items() if k.startswith("KFP_SERVE_ROUTER_")},
            },
            labels={**base_labels(name), LABEL_ROLE: "router"},
            mounts=[Mount(source=str(state_dir()), target=str(state_dir()), read_only=True)],
            # The router checks that the registry names its own pid (else another router took
            # over and it exits): the pid recorded is the host's, so it must see the host's.
            pid_mode="host",
        )
        container_id, pid = containers.run(spec)
        return _record("router", pid, port, spec, container_id, grpc_port=grpc_port), None

    def start_revision(
        self, plan: Plan, number: int, artifacts: dict[str, Path | str], grace: float
    ) -> RevisionRecord:
        suffix = secrets.token_hex(3)
        labels = {**base_labels(plan.name), LABEL_REVISION: str(number)}
        ports = {
            PREDICTOR: {
                flag: free_port()
                for flag in wanted_ports(predictor_args(plan), grpc=plan.predictor.grpc)
            }
        }
        if plan.transformer is not None:
            ports[TRANSFORMER] = {
                flag: free_port() for flag in wanted_ports([], grpc=plan.transformer.grpc)
            }
        models: dict[str, Mount] = {}
        started: dict[str, ProcessRecord] = {}
        try:
            for role, where in artifacts.items():
                if isinstance(where, Path):
                    models[role] = model_mount(str(where), volume=False)
                else:
                    name = f"kfp-serve-{plan.name}-{number}-{role}-{suffix}"
                    models[role] = self._storage_volume(where, name, labels)
            components = {PREDICTOR: plan.predictor, TRANSFORMER: plan.transformer}
            for spec in server_specs(plan, number, ports, models, suffix):
                role = spec.labels[LABEL_ROLE]
                container_id, pid = containers.run(spec)
                started[role] = _record(
                    role, pid, ports[role]["--http_port"], spec, container_id,
                    components[role].model_name,  # type: ignore[union-attr]
                    grpc_port=ports[role].get("--grpc_port", 0),
                )
        except BaseException:
            containers.stop(started.values(), grace)
            for mount in models.values():
                if mount.volume:
                    containers.remove_volume(mount.source)
            raise
        return revision_record(plan, number, started)


class DockerBackend(LocalBackend):
    """Serves InferenceService manifests as Docker containers (see the module docstring).

    Args:
        image: The kfp-serve image for the router and storage initializer (default
            ``KFP_SERVE_IMAGE``, else the default image name).
        **kwargs: As :class:`LocalBackend` (progress, stop_grace, probe_timeout).
    """

    name = DOCKER
    #: A container sees only its mounts: a model is copied into the endpoint's models
    #: directory (mounted at /mnt/models) before its server loads it.
    stage_trained_models = True

    def __init__(self, *, image: str | None = None, **kwargs: object) -> None:
        self._image = image
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def _servers(self) -> ContainerServers:
        return ContainerServers(self._image)

    def _status(self, record: EndpointRecord, *, probe: bool) -> EndpointStatus:
        status = super()._status(record, probe=probe)
        if backend_of(record) == DOCKER:
            missing = containers.limits_enforced()
            if missing:
                note = (
                    f"this Docker engine does not enforce {' or '.join(missing)} limits: the "
                    "manifest's resources are recorded on the containers but not applied"
                )
                status.message = f"{status.message}; {note}" if status.message else note
        return status


def _record(
    role: str,
    pid: int,
    port: int,
    spec: ContainerSpec,
    container_id: str,
    model_name: str = "",
    *,
    grpc_port: int = 0,
) -> ProcessRecord:
    return ProcessRecord(
        role=role,
        pid=pid,
        start_time=-1,
        port=port,
        log=CONTAINER_LOG_PREFIX + spec.name,
        model_name=model_name,
        container=container_id,
        grpc_port=grpc_port,
        unix_socket=flag_value(spec.args, UNIX_SOCKET_FLAG) or "",
    )


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _field(role: str) -> str:
    return "spec.predictor storageUri" if role == PREDICTOR else f"transformer {STORAGE_URI_ENV}"


def _refuse_plain_s3(uri: str, role: str) -> None:
    """Refuse an s3:// URI that is not a snapshot (as the local backend does) before a volume
    is made for it."""
    from kfp_serve.artifacts.snapshots.base import SNAPSHOT_NAME

    if not SNAPSHOT_NAME.fullmatch(uri.rstrip("/").rsplit("/", 1)[-1]):
        resolve_storage(uri, field=_field(role))  # raises the local backend's error


__all__ = ["DOCKER", "ContainerServers", "DockerBackend"]
