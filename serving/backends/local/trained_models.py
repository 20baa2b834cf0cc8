"""The models of a local multi-model endpoint: TrainedModel manifests loaded into its server.

A multi-model endpoint is an ordinary local endpoint (router + revision) whose predictor was
started empty (``--multi_model``, see :mod:`kfp_serve.serving.runtime.repository`). Loading a
TrainedModel is a call to that server's v2 model repository extension, made to every revision
that receives traffic; the registry record keeps each manifest and its outcome, so a later
process can list the models and a rollout of the parent loads them into the new revision before
traffic moves. Nothing here starts or stops a process: the server keeps running, and the other
models keep answering, while one loads or unloads.

Only the registry record and the server's HTTP API are used, so any backend that keeps local
endpoint records (the Docker backend too) hosts TrainedModels the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving import constants
from kfp_serve.serving.backends.base import TrainedModelStatus
from kfp_serve.serving.backends.local.registry import (
    EndpointRecord,
    RevisionRecord,
    TrainedModelRecord,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.trained_model import API_VERSION, KIND, is_multi_model, model_url

#: The folder of an endpoint's directory that a multi-model server loads staged models from.
MODELS_DIR = "models"
#: Reason of a model the registry names but the running server does not hold (restarted).
REASON_NOT_LOADED = "NotLoaded"
#: Reason of a model whose server does not answer.
REASON_SERVER_UNREACHABLE = "ServerUnreachable"


def read_manifest(manifest: dict[str, Any]) -> tuple[str, str]:
    """(model name, parent endpoint) of a TrainedModel manifest.

    Raises:
        ServingError: Not a TrainedModel, or a part the local backend needs is missing.
    """
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ServingError(
            f"apply_trained_model takes a {KIND} manifest ({API_VERSION}); build one with "
            "kfp_serve.serving.trained_model.trained_model_manifest()"
        )
    name = validate_name((manifest.get("metadata") or {}).get("name"), "metadata.name")
    spec = manifest.get("spec") or {}
    parent = spec.get("inferenceService")
    if not isinstance(parent, str) or not parent:
        raise ServingError(f"TrainedModel {name!r}: spec.inferenceService names no endpoint")
    model = spec.get("model") or {}
    missing = [k for k in ("framework", "storageUri", "memory") if not model.get(k)]
    if missing:
        raise ServingError(f"TrainedModel {name!r}: spec.model needs {', '.join(missing)}")
    return name, validate_name(parent, "spec.inferenceService")


def check_parent(record: EndpointRecord | None, parent: str, what: str) -> EndpointRecord:
    """The record of a multi-model endpoint ``parent``.

    Raises:
        ServingError: There is no such endpoint, or it serves one model.
    """
    if record is None:
        raise ServingError(
            f"{what}: there is no local endpoint named {parent!r}; create it first with "
            f"serve_many({parent!r}, [...]) or `kfp-serve serve --multi {parent} MODEL...`"
        )
    if not is_multi_model(record.latest.manifest):
        raise ServingError(
            f"{what}: endpoint {parent!r} serves one model (its predictor has a storageUri); "
            "models are loaded into multi-model endpoints only (serve_many)"
        )
    return record


def load(
    record: EndpointRecord,
    manifest: dict[str, Any],
    *,
    timeout: float,
    revisions: list[RevisionRecord] | None = None,
    stage: bool = False,
) -> TrainedModelRecord:
    """Load the model of ``manifest`` into each revision of ``record`` that gets traffic (or
    into ``revisions``); the outcome, success or refusal, as the record to keep.

    Args:
        stage: Put the verified model directory into the endpoint's model directory
            (:func:`models_dir`, one folder per model, as KServe's agent does) and have the
            server load it from there, instead of handing the server the storage URI: for
            servers that see only their model directory (containers).
    """
    from kfp_serve.serving.backends.local.rollout import now

    name = manifest["metadata"]["name"]
    model = manifest["spec"]["model"]
    parameters = {
        "storage_uri": model["storageUri"],
        "framework": model["framework"],
        "memory": str(model["memory"]),
    }
    result = TrainedModelRecord(name=name, manifest=manifest, ready=True, updated=now())
    targets = revisions if revisions is not None else record.active
    if stage:
        try:
            _stage(record.name, name, model["storageUri"])
        except ServingError as e:
            result.ready, result.reason = False, constants.REASON_LOAD_FAILED
            result.message = str(e)
            return result
        del parameters["storage_uri"]
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for rev in targets:
            url = f"{rev.predictor.url}/v2/repository/models/{name}/load"
            try:
                response = client.post(url, json={"parameters": parameters})
            except httpx.HTTPError as e:
                result.ready = False
                result.reason = REASON_SERVER_UNREACHABLE
                result.message = (
                    f"the server of revision {rev.revision} of endpoint {record.name!r} did not "
                    f"answer the load of {name!r}: {e}; see its log {rev.predictor.log!r}"
                )
                break
            if response.status_code != 200:
                body = _json(response)
                result.ready = False
                result.reason = body.get("reason") or constants.REASON_LOAD_FAILED
                result.message = body.get("error") or response.text
                break
    if result.ready:
        result.version = _served_version(record, name, targets)
    return result


def unload(record: EndpointRecord, name: str, *, timeout: float = 30.0) -> None:
    """Unload ``name`` from every running revision of ``record`` (one that never loaded it is
    fine: its 404 is the outcome wanted)."""
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for rev in record.revisions:
            if not rev.predictor.alive():
                continue
            url = f"{rev.predictor.url}/v2/repository/models/{name}/unload"
            try:
                response = client.post(url)
            except httpx.HTTPError as e:
                raise ServingError(
                    f"the server of endpoint {record.name!r} did not answer the unload of "
                    f"{name!r}: {e}; see its log {rev.predictor.log!r}"
                ) from e
            if response.status_code not in (200, 404):
                raise ServingError(
                    f"the server of endpoint {record.name!r} refused to unload {name!r} "
                    f"(HTTP {response.status_code}): {_json(response).get('error', response.text)}"
                )


def statuses(
    record: EndpointRecord, *, probe: bool, timeout: float = 1.0
) -> list[TrainedModelStatus]:
    """The status of each model ``record`` names; with ``probe``, checked against what the
    serving revision's server holds now (a restarted or dead server holds nothing)."""
    live: dict[str, dict[str, Any]] | None = None
    if probe and record.trained_models:
        live = index(record.latest, timeout=timeout)
    out = []
    for name in sorted(record.trained_models):
        tm = record.trained_models[name]
        model = tm.model
        status = TrainedModelStatus(
            name=name,
            parent=record.name,
            ready=tm.ready,
            reason=tm.reason,
            message=tm.message,
            storage_uri=str(model.get("storageUri", "")),
            framework=str(model.get("framework", "")),
            memory=str(model.get("memory", "")),
            url=model_url(record.url, name, record.latest.protocol) if tm.ready else None,
            labels=tm.labels,
        )
        if probe and tm.ready:
            entry = (live or {}).get(name)
            if live is None:
                status.ready, status.reason = False, REASON_SERVER_UNREACHABLE
                status.message = (
                    f"the server of endpoint {record.name!r} does not answer; see its log "
                    f"{record.latest.predictor.log!r}"
                )
            elif entry is None or entry.get("state") != "Ready":
                status.ready, status.reason = False, REASON_NOT_LOADED
                status.message = (
                    f"the server of endpoint {record.name!r} does not hold {name!r} (it was "
                    f"restarted?); load it again: `kfp-serve models load {record.name} ...`"
                )
            if not status.ready:
                status.url = None
        out.append(status)
    return out


def index(revision: RevisionRecord, *, timeout: float = 1.0) -> dict[str, dict[str, Any]] | None:
    """The server's repository index by model name, None when it does not answer."""
    try:
        response = httpx.post(
            f"{revision.predictor.url}/v2/repository/index", json={}, timeout=timeout,
            trust_env=False,
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return {e["name"]: e for e in _json(response, default=[]) if isinstance(e, dict)}


def models_dir(endpoint: str) -> Path:
    """A multi-model endpoint's model directory, the server's ``--model_dir``: a model loaded
    without a storage URI is read from its folder here (created if missing)."""
    from kfp_serve.serving.backends.local import registry

    path = registry.endpoint_dir(endpoint) / MODELS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stage(endpoint: str, name: str, storage_uri: str) -> None:
    """Copy the verified model directory to ``models_dir(endpoint)/name``, replacing what was
    there only once the copy is complete (a reload never sees half a directory)."""
    from kfp_serve.serving.backends.local.storage import resolve_storage

    source = resolve_storage(storage_uri, field=f"TrainedModel {name!r} storageUri")
    root = models_dir(endpoint)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        target = root / name
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=root))
            os.replace(target, old / name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        raise ServingError(f"cannot stage model {name!r} for endpoint {endpoint!r}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unstage(endpoint: str, name: str) -> None:
    """Remove a staged model's folder (nothing if it was not staged)."""
    shutil.rmtree(models_dir(endpoint) / name, ignore_errors=True)


def owner(records: list[EndpointRecord], name: str) -> EndpointRecord | None:
    """The endpoint that hosts model ``name`` (TrainedModel names are unique, as in a
    Kubernetes namespace)."""
    return next((r for r in records if name in r.trained_models), None)


def _served_version(
    record: EndpointRecord, name: str, targets: list[RevisionRecord]
) -> str | None:
    if not targets:
        return None
    entry = (index(targets[-1], timeout=5.0) or {}).get(name) or {}
    return entry.get("version") or None


def _json(response: httpx.Response, default: Any = None) -> Any:
    try:
        return response.json()
    except ValueError:
        return default if default is not None else {}
