"""The on-disk registry of local endpoints and the process bookkeeping behind it.

Every local endpoint owns ``$KFP_SERVE_HOME/endpoints/<name>/``: ``endpoint.json`` (the registry
record, replaced atomically so a reader never sees half a file), ``logs/`` (one file per server
process) and nothing else. The record is what lets a later process — the user's notebook, the
``kfp-serve`` CLI, the router — find, check and stop servers that a finished pipeline step
started.

A pid alone is not an identity: pids are reused, so every process is stored with its start time
from ``/proc/<pid>/stat`` and is only considered ours (alive, or safe to signal) when both match.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.home import state_dir
from kfp_serve.artifacts.names import validate_name

REGISTRY_FORMAT = 1
REGISTRY_FILE = "endpoint.json"
LOGS_DIR = "logs"
ENDPOINTS_DIR = "endpoints"


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


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie.

    A zombie has exited but not been reaped by its parent (e.g. a test that started the server
    and then killed it): it no longer serves, so it counts as gone.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    state, start = rest[0], rest[19]
    if state in ("Z", "X"):
        return None
    return int(start)


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """True if the recorded process still runs (same pid *and* same start time)."""
        return process_start_time(self.pid) == self.start_time

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group, if the process is still the one recorded."""
        if self.alive():
            _signal_group(self.pid, sig)

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after ``grace``.

        Servers run in their own session (pgid == pid), so the group also takes any worker
        processes they forked. Nothing is signalled unless the start time still matches: a
        reused pid belongs to someone else.
        """
        if not self.alive():
            _reap(self.pid)
            return
        _signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.02)
        if self.alive():
            _signal_group(self.pid, signal.SIGKILL)
            for _ in range(100):
                _reap(self.pid)
                if not self.alive():
                    break
                time.sleep(0.01)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # Not our group after all (should not happen after the start-time check): signal only
        # the process itself, which is ours.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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

    @property
    def url(self) -> str:
        return self.router.url

    @property
    def latest(self) -> RevisionRecord:
        return max(self.revisions, key=lambda r: r.revision)

    @property
    def active(self) -> list[RevisionRecord]:
        """Revisions that currently receive traffic (or are kept to receive it)."""
        return [r for r in self.revisions if self.traffic.get(str(r.revision), 0) > 0]

    def revision(self, number: int) -> RevisionRecord | None:
        return next((r for r in self.revisions if r.revision == number), None)

    def to_dict(self) -> dict[str, Any]:
        latest = self.latest
        # Flat summary fields first: they are what a person (or `kfp-serve endpoints`) reads.
        return {
            "format": self.format,
            "name": self.name,
            "url": self.url,
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
        )


def read_record(name: str) -> EndpointRecord | None:
    """The registry record of ``name``, or None if there is none (or it is unreadable)."""
    path = registry_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    try:
        return EndpointRecord.from_dict(data)
    except (KeyError, TypeError, ValueError):
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


def list_names() -> list[str]:
    """Names of every endpoint directory that holds a registry record, sorted."""
    root = endpoints_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / REGISTRY_FILE).exists())


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold the per-endpoint lock: applies and deletes of one name never interleave.

    The lock file sits next to (not inside) the endpoint directory so delete can remove the
    directory while holding it.
    """
    lock_path = endpoints_root() / f".{validate_name(name, 'endpoint name')}.lock"
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def log_tail(path: str | os.PathLike[str], lines: int = 20, max_bytes: int = 8192) -> str:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
