"""The on-disk registry of local endpoints and the process bookkeeping behind it.

Every local endpoint owns ``$KFP_SERVE_HOME/endpoints/<name>/``: ``endpoint.json`` (the registry
record, replaced atomically so a reader never sees half a file), ``logs/`` (one file per server
process) and nothing else. The record is what lets a later process — the user's notebook, the
``kfp-serve`` CLI, the router — find, check and stop servers that a finished pipeline step
started.

This module alone knows the format of ``endpoint.json``: the backend and the router read and
write it through :class:`EndpointRecord`. Processes are stored with pid *and* start time, the
identity the supervisor checks before it signals anything (pids are reused).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.home import state_dir
from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving.backends.local import supervisor
from kfp_serve.serving.constants import LOOPBACK

REGISTRY_FORMAT = 1
REGISTRY_FILE = "endpoint.json"
LOGS_DIR = "logs"
ENDPOINTS_DIR = "endpoints"
#: Rollout events an endpoint record keeps (the oldest are dropped first).
MAX_EVENTS = 50
#: Rolled-out revisions a record remembers: the stable one and the one before it.
MAX_ROLLED_OUT = 2


def endpoints_root() -> Path:
    """``$KFP_SERVE_HOME/endpoints``, created if missing."""
    root = state_dir() / ENDPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    return root


def endpoint_dir(name: str) -> Path:
    """The directory of endpoint ``name``; the name is validated before it touches a path."""
    return endpoints_root() / validate_name(name, "endpoint name")


def registry_path(name: str) -> Path:
    """The registry record of endpoint ``name``."""
    return endpoint_dir(name) / REGISTRY_FILE


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class ProcessRecord:
    """One server process of an endpoint (predictor, transformer or router)."""

    role: str
    pid: int
    start_time: int
    port: int
    log: str
    #: Model name the server was started with (empty for the router).
    model_name: str = ""
    #: The Docker backend's container id; empty for a process. With it, ``pid`` is the
    #: container's main process as the host sees it, and ``log`` is ``docker:NAME``.
    container: str = ""
    #: Its OIP gRPC port (a server run with gRPC on; the router's gRPC listener), else 0.
    grpc_port: int = 0
    #: The unix socket a model server also listens on (``@name``: abstract), where the router
    #: reaches it; empty when it has none (containers, older records).
    unix_socket: str = ""

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``, the way the router names its upstreams."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def grpc_address(self) -> str:
        """``host:port`` of its gRPC listener, empty when it has none."""
        return f"{LOOPBACK}:{self.grpc_port}" if self.grpc_port else ""

    def alive(self) -> bool:
        """True if the recorded process still runs (same pid *and* same start time)."""
        return supervisor.alive(self)

    @classmethod
    def started(
        cls,
        proc: subprocess.Popen,
        role: str,
        port: int,
        log: Path,
        model_name: str = "",
        grpc_port: int = 0,
        unix_socket: str = "",
    ) -> ProcessRecord:
        """The record of ``proc``, which the supervisor just started."""
        start = supervisor.start_time(proc.pid, zombie=True)
        return cls(
            role=role,
            pid=proc.pid,
            start_time=start if start is not None else -1,
            port=port,
            log=str(log),
            model_name=model_name,
            grpc_port=grpc_port,
            unix_socket=unix_socket,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# --------------------------------------------------------------------------------------------
# Registry record


@dataclass
class RevisionRecord:
    """One started revision of an endpoint: its servers and the manifest they run."""

    revision: int
    created: str
    manifest: dict[str, Any]
    #: Hash of the spec without canaryTrafficPercent: two applies with the same value only move
    #: traffic, they do not start new servers.
    spec_hash: str
    protocol: str
    model_name: str
    predictor: ProcessRecord
    transformer: ProcessRecord | None = None
    model_ids: dict[str, str] = field(default_factory=dict)

    @property
    def entry(self) -> ProcessRecord:
        """The server that receives the endpoint's requests (transformer if there is one)."""
        return self.transformer or self.predictor

    @property
    def processes(self) -> list[ProcessRecord]:
        return [p for p in (self.transformer, self.predictor) if p is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RevisionRecord:
        values = dict(data)
        values["predictor"] = ProcessRecord.from_dict(data["predictor"])
        if data.get("transformer"):
            values["transformer"] = ProcessRecord.from_dict(data["transformer"])
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


@dataclass
class TrainedModelRecord:
    """One model a multi-model endpoint hosts (or was asked to host): its TrainedModel
    manifest, and whether the server loaded it (with the reason when it did not)."""

    name: str
    manifest: dict[str, Any]
    ready: bool
    updated: str
    reason: str | None = None
    message: str | None = None
    #: The version the server reported when it loaded the model.
    version: str | None = None

    @property
    def model(self) -> dict[str, Any]:
        """``spec.model`` of the manifest: framework, storageUri, memory."""
        return (self.manifest.get("spec") or {}).get("model") or {}

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.manifest.get("metadata") or {}).get("labels") or {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainedModelRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class EndpointRecord:
    """Everything ``endpoint.json`` holds about one local endpoint."""

    name: str
    created: str
    updated: str
    router: ProcessRecord
    revisions: list[RevisionRecord]
    #: revision number (as a string: JSON keys) -> percent of requests; sums to 100.
    traffic: dict[str, int]
    #: Bumped on every write; the router reports the generation it routes by, so a rollout
    #: knows when the switch has taken effect.
    generation: int = 1
    format: int = REGISTRY_FORMAT
    #: A multi-model endpoint's models, by name (empty for a single-model endpoint).
    trained_models: dict[str, TrainedModelRecord] = field(default_factory=dict)
    #: Revisions that took all traffic, oldest first (KServe's previous and latest rolled-out
    #: revision); the last one is the stable revision a canary is compared with.
    rolled_out: list[int] = field(default_factory=list)
    #: What happened to the endpoint, oldest first: ``{"time", "action", "message", ...}``.
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.router.url

    @property
    def grpc_address(self) -> str:
        """The router's gRPC address (``host:port``) when a revision with traffic serves gRPC,
        else empty."""
        if any(r.entry.grpc_port for r in self.active):
            return self.router.grpc_address
        return ""

    @property
    def latest(self) -> RevisionRecord:
        return max(self.revisions, key=lambda r: r.revision)

    @property
    def active(self) -> list[RevisionRecord]:
        """Revisions that currently receive traffic (or are kept to receive it)."""
        return [r for r in self.revisions if self.traffic.get(str(r.revision), 0) > 0]

    def routes(self) -> list[tuple[RevisionRecord, int]]:
        """The revisions that receive requests, each with its percentage of them."""
        return [(r, self.traffic[str(r.revision)]) for r in self.active]

    def revision(self, number: int | None) -> RevisionRecord | None:
        return next((r for r in self.revisions if r.revision == number), None)

    def add_event(self, event: dict[str, Any]) -> None:
        self.events = [*self.events, event][-MAX_EVENTS:]

    def mark_rolled_out(self, number: int) -> None:
        """Revision ``number`` took all traffic: it is the stable revision from now on."""
        if not self.rolled_out or self.rolled_out[-1] != number:
            self.rolled_out = [*self.rolled_out, number][-MAX_ROLLED_OUT:]

    def to_dict(self) -> dict[str, Any]:
        latest = self.latest
        # Flat summary fields first: they are what a person (or `kfp-serve endpoints`) reads.
        return {
            "format": self.format,
            "name": self.name,
            "url": self.url,
            "grpc": self.grpc_address,
            "protocol": latest.protocol,
            "model_name": latest.model_name,
            "model_ids": latest.model_ids,
            "revision": latest.revision,
            "created": self.created,
            "updated": self.updated,
            "generation": self.generation,
            "traffic": self.traffic,
            "ports": {
                "router": self.router.port,
                **{f"{p.role}-{r.revision}": p.port for r in self.revisions for p in r.processes},
            },
            "pids": {
                "router": self.router.pid,
                **{f"{p.role}-{r.revision}": p.pid for r in self.revisions for p in r.processes},
            },
            "manifest": latest.manifest,
            "router": asdict(self.router),
            "revisions": [r.to_dict() for r in self.revisions],
            "trained_models": {n: asdict(m) for n, m in sorted(self.trained_models.items())},
            "rolled_out": self.rolled_out,
            "events": self.events,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointRecord:
        return cls(
            name=data["name"],
            created=data["created"],
            updated=data["updated"],
            router=ProcessRecord.from_dict(data["router"]),
            revisions=[RevisionRecord.from_dict(r) for r in data["revisions"]],
            traffic={str(k): int(v) for k, v in data["traffic"].items()},
            generation=int(data.get("generation", 1)),
            format=int(data.get("format", REGISTRY_FORMAT)),
            trained_models={
                str(n): TrainedModelRecord.from_dict(m)
                for n, m in (data.get("trained_models") or {}).items()
            },
            rolled_out=[int(n) for n in data.get("rolled_out") or []],
            events=list(data.get("events") or []),
        )


def revision_name(endpoint: str, number: int) -> str:
    """KServe's name for revision ``number`` of an endpoint's predictor (``iris-predictor-00002``),
    so a local RolloutState reads like a cluster's."""
    return f"{endpoint}-predictor-{number:05d}"


def read_record(name: str) -> EndpointRecord | None:
    """The registry record of ``name``, or None if there is none (or it is unreadable)."""
    return read_record_file(registry_path(name))


def read_record_file(path: str | os.PathLike[str]) -> EndpointRecord | None:
    """The record in the registry file ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    try:
        return EndpointRecord.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write_record(record: EndpointRecord) -> None:
    """Write ``record`` atomically (temp file + fsync + rename in the same directory)."""
    directory = endpoint_dir(record.name)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record.to_dict(), indent=2, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".endpoint-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / REGISTRY_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def endpoint_dirs() -> list[Path]:
    """Every endpoint directory, with a record or not (a failed first start keeps its logs)."""
    root = endpoints_root()
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_names() -> list[str]:
    """Names of every endpoint directory that holds a registry record, sorted."""
    root = endpoints_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / REGISTRY_FILE).exists())


def exists(name: str) -> bool:
    """True if anything of endpoint ``name`` is on disk (a record, or logs of a failed start)."""
    return (endpoints_root() / validate_name(name, "endpoint name")).exists()


def remove(name: str) -> None:
    """Remove the directory of endpoint ``name`` (its record and logs)."""
    shutil.rmtree(endpoint_dir(name), ignore_errors=True)


def locked(name: str):  # noqa: ANN201 - a filelock lock object, used with ``with``
    """The per-endpoint lock: applies and deletes of one name never interleave."""
    return supervisor.name_lock(endpoints_root(), validate_name(name, "endpoint name"))
