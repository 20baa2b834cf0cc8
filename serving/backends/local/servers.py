"""How the servers of an endpoint are started: the one seam between serving as processes (the
local backend) and serving as containers (the Docker backend).

Everything else — planning a manifest, the registry, the router's traffic split, rollouts that
keep the old revision on failure, readiness, status, stop — is the same code for both: it works
on :class:`.registry.ProcessRecord` s, and the supervisor checks and stops a record of either
kind. A :class:`Servers` only says how a revision's artifacts are made ready to load and how its
servers and the endpoint's router are started.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

from kfp_serve.serving.backends.local import rollout, trained_models
from kfp_serve.serving.backends.local.plan import Plan
from kfp_serve.serving.backends.local.registry import ProcessRecord, RevisionRecord
from kfp_serve.serving.backends.local.storage import resolve_storage
from kfp_serve.serving.constants import PREDICTOR, STORAGE_URI_ENV, TRANSFORMER


class Servers(Protocol):
    """Starts the servers of an endpoint (see the module docstring)."""

    #: The backend name statuses report for endpoints these servers run.
    backend: str

    def prepare(self, plan: Plan) -> dict[str, Path | str]:
        """What each role (predictor, transformer) of ``plan`` loads, checked before anything
        starts: a tampered snapshot or a missing image stops the rollout here."""
        ...

    def start_router(
        self, name: str, port: int | None, grpc_port: int | None = None
    ) -> tuple[ProcessRecord, subprocess.Popen | None]:
        """Start the router of endpoint ``name`` on ``port`` (its gRPC listener, where the
        servers offer one, on ``grpc_port``) if it is free, else on another;
        does not wait. The handle, if any, tells an early exit apart (None: ask the record)."""
        ...

    def start_revision(
        self, plan: Plan, number: int, artifacts: dict[str, Path | str], grace: float
    ) -> RevisionRecord:
        """Start revision ``number`` of ``plan``; does not wait. On failure nothing of it is
        left running."""
        ...


def verified_dirs(plan: Plan) -> dict[str, Path]:
    """The verified local directory each role of ``plan`` loads (snapshots checked).

    A multi-model server starts empty on its models directory; each TrainedModel is verified
    as it loads.
    """
    dirs = {
        PREDICTOR: trained_models.models_dir(plan.name)
        if plan.multi_model
        else resolve_storage(plan.predictor.storage_uri, field="spec.predictor storageUri")
    }
    if plan.transformer is not None:
        dirs[TRANSFORMER] = resolve_storage(
            plan.transformer.storage_uri, field=f"transformer {STORAGE_URI_ENV}"
        )
    return dirs


class ProcessServers:
    """Servers as detached processes of this machine (forked from the warm pool when it runs)."""

    backend = "local"

    def __init__(self, python: str) -> None:
        self.python = python

    def prepare(self, plan: Plan) -> dict[str, Path | str]:
        from kfp_serve.serving.runtime import launch

        # The servers are forked from a warm pool: start it now, so it imports while the
        # snapshots are verified and the router starts (no-op if it runs or is disabled).
        launch.warm_up(self.python)
        return dict(verified_dirs(plan))

    def start_router(
        self, name: str, port: int | None, grpc_port: int | None = None
    ) -> tuple[ProcessRecord, subprocess.Popen | None]:
        return rollout.start_router(self.python, name, port, dict(os.environ), grpc_port=grpc_port)

    def start_revision(
        self, plan: Plan, number: int, artifacts: dict[str, Path | str], grace: float
    ) -> RevisionRecord:
        dirs = {role: Path(where) for role, where in artifacts.items()}
        return rollout.start_revision(self.python, plan, number, dirs, grace)
