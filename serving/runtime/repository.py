"""The model repository of a multi-model server: load and unload models while it serves.

KServe's multi-model serving starts one server of a framework and loads TrainedModels into it
through the v2 model repository extension: ``POST /v2/repository/index``,
``POST /v2/repository/models/{name}/load`` and ``.../unload``. Here the load body may name what
to load (the TrainedModel's spec)::

    {"parameters": {"storage_uri": "file://.../blake3-<hex>", "framework": "sklearn",
                    "memory": "64Mi"}}

and without one the model is read from ``{model_dir}/{name}``, where KServe's agent puts it.

- A snapshot URI is opened through the snapshot store, which verifies its digest, exactly as a
  single-model endpoint's snapshot is verified before its server starts: a tampered snapshot is
  refused and never loaded.
- Memory accounting: each model declares its memory; a load that would take the declared total
  past the server's limit (its ``resources.limits.memory``) is refused with the numbers, as
  KServe's controller refuses the TrainedModel.
- A failed load (tampered snapshot, wrong framework, too little memory) changes nothing that
  serves: the other models, and an older version of the same name, keep answering; the index
  reports the failure's reason until the name loads or is unloaded.
- Loads run in a worker thread, one at a time: requests to the loaded models keep being answered
  while a model loads, and the memory check never races another load.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_serve.serving import constants
from kfp_serve.serving.errors import ServingError

log = logging.getLogger("kfp_serve.runtime.repository")

#: The name ``GET /v2`` lists this extension under (KServe's model server's own name for it).
EXTENSION = "model_repository_extension"
#: Index states (KServe's wording).
READY = "Ready"
NOT_READY = "NotReady"


class LoadRefused(ServingError):
    """A load the repository refused; ``status`` is the HTTP status, ``reason`` the cause."""

    def __init__(self, message: str, *, reason: str, status: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass
class Entry:
    """What the repository knows of one model name: what serves, and the last failure."""

    name: str
    memory: int = 0
    memory_text: str = ""
    storage_uri: str = ""
    framework: str = ""
    version: str | None = None
    #: Why the last load of this name failed (None once a load succeeds).
    reason: str | None = None
    message: str | None = None

    def describe(self, ready: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version or "",
            "state": READY if ready else NOT_READY,
            "reason": self.message or "",
            "parameters": {
                "reason_code": self.reason or "",
                "memory": self.memory_text,
                "storage_uri": self.storage_uri,
                "framework": self.framework,
            },
        }


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}Mi"


class ModelRepository:
    """The models one multi-model server hosts, shared with its HTTP and gRPC front ends.

    Args:
        framework: The framework this server serves (the parent's model format); None: any.
        memory_limit: The server's memory limit in bytes; None: no accounting.
        model_dir: Where a model named ``m`` is read from when a load names no storage URI.
        runtime: The ServingRuntime whose answers the models give (``--serving_runtime``).
        metrics: Give each loaded model latency histograms.
    """

    def __init__(
        self,
        *,
        framework: str | None,
        memory_limit: int | None,
        model_dir: str | Path,
        runtime: str,
        metrics: bool = False,
    ) -> None:
        #: Loaded models by name: the dict the HTTP app and the gRPC server serve from.
        self.models: dict[str, Any] = {}
        self.entries: dict[str, Entry] = {}
        self.framework = framework
        self.memory_limit = memory_limit
        self.model_dir = Path(model_dir)
        self.runtime = runtime
        self.metrics = metrics
        self._lock: asyncio.Lock | None = None

    # -- index ------------------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model name the repository knows, loaded or failed, sorted by name."""
        out = []
        for name in sorted(self.entries):
            ready = name in self.models and bool(self.models[name].ready)
            if ready or not ready_only:
                out.append(self.entries[name].describe(ready))
        return out

    def used_memory(self, *, besides: str | None = None) -> int:
        """The memory the loaded models declared (not counting ``besides``)."""
        return sum(
            self.entries[n].memory for n in self.models if n != besides and n in self.entries
        )

    # -- load / unload ----------------------------------------------------------------------

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load (or replace) model ``name``; the entry's failure is recorded on refusal.

        Raises:
            LoadRefused: Bad parameters (400), too little memory (409), or the model cannot
                be loaded (503, KServe's "model not ready"), with the reason.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            entry = Entry(name=name)
            try:
                self._fill(entry, parameters or {})
                self._check_memory(entry)
                model = await asyncio.get_running_loop().run_in_executor(
                    None, self._load_model, entry
                )
            except LoadRefused as e:
                self._record_failure(name, entry, e)
                raise
            self.entries[name] = entry
            self.models[name] = model  # one assignment: requests see the old model or the new
            log.info(
                "loaded model %r (%s, version %s, %s declared; %s of %s in use)",
                name, entry.framework, entry.version, entry.memory_text,
                _mib(self.used_memory()),
                _mib(self.memory_limit) if self.memory_limit else "no limit",
            )
            return {"name": name, "load": True}

    def unload(self, name: str) -> dict[str, Any]:
        """Stop serving ``name`` and forget it (and its failures).

        Raises:
            LoadRefused: No model of that name (404).
        """
        if name not in self.models and name not in self.entries:
            raise LoadRefused(
                f"model {name!r} is not in the repository; it holds {sorted(self.entries)}",
                reason="NotFound",
                status=404,
            )
        self.models.pop(name, None)
        self.entries.pop(name, None)
        log.info("unloaded model %r", name)
        return {"name": name, "unload": True}

    def _fill(self, entry: Entry, parameters: dict[str, Any]) -> None:
        from kfp_serve.serving.trained_model import memory_bytes

        if not isinstance(parameters, dict):
            raise LoadRefused(
                "load: 'parameters' must be a JSON object", reason="BadRequest", status=400
            )
        entry.storage_uri = str(parameters.get("storage_uri") or "")
        entry.framework = str(parameters.get("framework") or self.framework or "")
        memory = parameters.get("memory")
        if memory is not None:
            try:
                entry.memory = memory_bytes(memory)
            except ValueError as e:
                raise LoadRefused(f"load {entry.name!r}: {e}", reason="BadRequest",
                                  status=400) from e
            entry.memory_text = str(memory)
        if self.framework and entry.framework != self.framework:
            raise LoadRefused(
                f"model {entry.name!r} is declared {entry.framework!r}, but this server "
                f"serves {self.framework!r} models: host it on a {entry.framework} endpoint",
                reason=constants.REASON_FRAMEWORK_MISMATCH,
                status=400,
            )

    def _check_memory(self, entry: Entry) -> None:
        if self.memory_limit is None:
            return
        # A reload of a name replaces it: its old memory is given back.
        used = self.used_memory(besides=entry.name)
        if used + entry.memory > self.memory_limit:
            raise LoadRefused(
                f"not enough memory to load model {entry.name!r}: it needs {entry.memory_text} "
                f"({entry.memory} bytes), the loaded models declare {_mib(used)} ({used} bytes) "
                f"of the server's {_mib(self.memory_limit)} limit ({self.memory_limit} bytes), "
                f"leaving {self.memory_limit - used} bytes; raise the endpoint's memory limit "
                "or unload a model",
                reason=constants.REASON_MEMORY_UNAVAILABLE,
                status=409,
            )

    def _load_model(self, entry: Entry) -> Any:
        """Verify and load the model directory (in a worker thread)."""
        from kfp_serve.serving.runtime.predictor import PredictorModel

        try:
            directory = self._directory(entry)
            model = PredictorModel(entry.name, directory, runtime=self.runtime)
            model.load()
        except ServingError as e:
            raise LoadRefused(
                f"cannot load model {entry.name!r}: {e}",
                reason=constants.REASON_LOAD_FAILED,
                status=503,
            ) from e
        served = model.served.framework if model.served else ""
        if entry.framework and served != entry.framework:
            raise LoadRefused(
                f"model {entry.name!r} at {entry.storage_uri or str(directory)!r} is a "
                f"{served} model, not {entry.framework!r} as declared",
                reason=constants.REASON_FRAMEWORK_MISMATCH,
                status=400,
            )
        entry.framework = served
        entry.version = model.version
        if self.metrics:
            from kfp_serve.serving.runtime import metrics

            model.timers = metrics.timers_for(entry.name)
        return model

    def _directory(self, entry: Entry) -> Path:
        if not entry.storage_uri:
            return self.model_dir / entry.name
        # The check single-model serving does before its server starts: a snapshot URI is
        # opened through the snapshot store, which verifies the digest.
        from kfp_serve.serving.backends.local.storage import resolve_storage

        return resolve_storage(entry.storage_uri, field=f"model {entry.name!r} storage_uri")

    def _record_failure(self, name: str, entry: Entry, error: LoadRefused) -> None:
        """Keep what serves; note why the new load of ``name`` failed."""
        log.warning("refused to load model %r: %s", name, error)
        kept = self.entries.get(name) if name in self.models else None
        target = kept if kept is not None else entry
        target.reason = error.reason
        target.message = str(error)
        self.entries[name] = target
