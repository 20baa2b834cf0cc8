"""Functions for Kale step cells: submit, snapshot, serve and smoke-test a model.

Kale runs every ``step:`` cell in its own pod and moves variables between steps by pickling them,
so each function here takes and returns plain values (ids, names, URLs, small dicts of numbers
and lists) that survive that trip unchanged. The heavy layers (``artifacts``, ``serving``, numpy,
scikit-learn, KServe) are imported inside the functions: ``import kale_steps`` sits in a
notebook's ``imports`` cell, which Kale prepends to every step, and must cost nothing.

Run-linking: inside a KFP pod the artifacts layer finds the pipeline run from the pod's
environment and records contexts itself; these functions add the names that only the caller
knows (the step), so lineage shows which notebook step produced what. Locally the same calls use
the embedded defaults (SQLite MLMD, file snapshots, local model servers under ``KFP_SERVE_HOME``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

# How many mismatching rows a smoke result lists (the count is always complete); keeps the dict
# small enough to pickle between steps and print in a notebook.
MAX_MISMATCH_EXAMPLES = 10
# Single-row requests timed for the latency figures: enough for a stable median without making a
# smoke test of a large sample slow.
LATENCY_REQUESTS = 20


def submit_model(
    model: Any,
    name: str,
    version: str = "1.0.0",
    *,
    description: str = "",
    author: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> int:
    """Record a fitted model as a Model artifact in ML Metadata.

    Args:
        model: A fitted scikit-learn estimator or pipeline, or an XGBoost model
            (``XGBClassifier``/``XGBRegressor``/``Booster``).
        name: Artifact name, a DNS-1123 label such as ``"wine-classifier"``.
        version: Model version, e.g. ``"1.0.0"``.
        description: Free text shown with the artifact.
        author: Who trained it; the artifacts layer picks a default when None.
        tags: Extra string key/values stored with the artifact.

    Returns:
        The MLMD id of the new Model artifact (an ``int``).

    Raises:
        artifacts.errors.ArtifactError: ``model`` is not a supported, fitted model.
        artifacts.errors.InvalidNameError: ``name`` or ``version`` is not valid.
    """
    from artifacts import Model

    kwargs = _artifact_kwargs(description=description, author=author, tags=tags)
    artifact = Model(model=model, name=name, version=version, **kwargs)
    return int(artifact.submit_artifact())


def submit_transformer(
    transformer: Any,
    name: str,
    version: str = "1.0.0",
    *,
    description: str = "",
    author: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> int:
    """Record a fitted pre-processing object as a Transformer artifact in ML Metadata.

    The served transformer calls ``transformer.transform(rows)`` on every request before the
    model sees it, so clients send raw features.

    Args:
        transformer: A fitted object with ``.transform(X)`` (e.g. ``StandardScaler``).
        name: Artifact name, a DNS-1123 label such as ``"wine-scaler"``.
        version: Transformer version, e.g. ``"1.0.0"``.
        description: Free text shown with the artifact.
        author: Who fitted it; the artifacts layer picks a default when None.
        tags: Extra string key/values stored with the artifact.

    Returns:
        The MLMD id of the new Transformer artifact (an ``int``).

    Raises:
        artifacts.errors.ArtifactError: ``transformer`` has no ``transform`` or is not fitted.
        artifacts.errors.InvalidNameError: ``name`` or ``version`` is not valid.
    """
    from artifacts import Transformer

    kwargs = _artifact_kwargs(description=description, author=author, tags=tags)
    artifact = Transformer(name=name, transformer=transformer, version=version, **kwargs)
    return int(artifact.submit_artifact())


def snapshot(artifact_id: int, store: str | None = None) -> dict[str, Any]:
    """Take an immutable, content-addressed snapshot of an artifact and link it in MLMD.

    Call it in the same step as ``submit_*``: the artifact's directory lives on that step's
    disk, while the snapshot lives in the snapshot store every later step (and the model
    server) can read. Calling it again for an artifact that already has a snapshot returns that
    snapshot, so a re-run step stays idempotent.

    Args:
        artifact_id: The id ``submit_model``/``submit_transformer`` returned.
        store: Snapshot store root (``file://…``, ``s3://…``, ``pvc://…``); default from
            ``KFP_SERVE_SNAPSHOT_STORE``, else ``$KFP_SERVE_HOME/snapshots``.

    Returns:
        ``{"artifact_id", "uri", "digest", "size"}``.

    Raises:
        artifacts.errors.MetadataError: no artifact has that id.
        artifacts.errors.SnapshotError: the artifact's files cannot be read or stored.
    """
    from artifacts import SnapshotStore, get_artifact, link_snapshot

    artifact_id = _as_id(artifact_id, "artifact_id")
    record = get_artifact(artifact_id)
    if record.snapshot_uri and not os.path.isdir(_local_path(record.uri)):
        # A later step (another pod) cannot see the directory any more; the snapshot it already
        # has is the one to use.
        return {
            "artifact_id": artifact_id,
            "uri": record.snapshot_uri,
            "digest": record.digest,
            "size": None,
        }
    snap = SnapshotStore(store).snapshot(_local_path(record.uri))
    if snap.uri != record.snapshot_uri:
        link_snapshot(artifact_id, snap)
    return {"artifact_id": artifact_id, "uri": snap.uri, "digest": snap.digest, "size": snap.size}


def serve(
    model_id: int,
    transformer_id: int | None = None,
    serve_config: Mapping[str, Any] | str | Any | None = None,
    name: str | None = None,
    *,
    namespace: str | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Serve a submitted model (and optional transformer) and wait until it is Ready.

    Locally this starts KServe model servers on 127.0.0.1; in a cluster it applies an
    InferenceService. Serving the same name again replaces the endpoint.

    Args:
        model_id: The Model artifact id from ``submit_model``.
        transformer_id: The Transformer artifact id from ``submit_transformer``, if any.
        serve_config: A ``serving.ServeConfig``, a dict, or a JSON string (handy as a Kale
            pipeline parameter), e.g. ``{"limits": {"memory": "1Gi"}}``.
        name: Endpoint name (DNS-1123 label); default: the model artifact's name.
        namespace: Kubernetes namespace; default: the pod's own, or the kube context's.
        timeout: Seconds to wait for the endpoint to become Ready.

    Returns:
        ``{"name", "url", "namespace", "model_id", "transformer_id"}``.

    Raises:
        artifacts.errors.MetadataError: no artifact has ``model_id``/``transformer_id``.
        serving.errors.ServeConfigError: ``serve_config`` has an unknown or invalid field.
        serving.errors.ServingError: the endpoint did not become Ready in time.
    """
    import serving

    model_id = _as_id(model_id, "model_id")
    if transformer_id is not None:
        transformer_id = _as_id(transformer_id, "transformer_id")
    if isinstance(serve_config, str):
        serve_config = _parse_serve_config(serve_config)
    if name is None:
        from artifacts import get_artifact

        name = get_artifact(model_id).name
    endpoint = serving.serve(
        model_id,
        transformer_id,
        serve_config=serve_config,
        name=name,
        namespace=namespace,
        wait=True,
        timeout=timeout,
    )
    return {
        "name": endpoint.name,
        "url": endpoint.url,
        "namespace": getattr(endpoint, "namespace", namespace),
        "model_id": model_id,
        "transformer_id": transformer_id,
    }


def smoke_predict(
    name: str,
    samples: Any,
    expected: Any = None,
    *,
    namespace: str | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-6,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Send samples to an endpoint, compare with the expected predictions, time requests.

    The first request is retried until ``timeout``: an endpoint can report Ready a moment before
    it answers (kserve/kserve#1658). Labels must match exactly; numbers (regression values,
    probabilities) within ``rel_tol``/``abs_tol``.

    Args:
        name: Endpoint name, as ``serve`` returned it.
        samples: Rows of raw features (list of lists, numpy array or DataFrame).
        expected: What the notebook's own model predicts for ``samples``; None only checks
            that the endpoint answers one prediction per row.
        namespace: Kubernetes namespace of the endpoint, if not the default.
        rel_tol: Relative tolerance for numeric predictions.
        abs_tol: Absolute tolerance for numeric predictions.
        timeout: Seconds to keep retrying the first request.

    Returns:
        ``{"name", "passed", "n_samples", "mismatches", "mismatch_examples", "predictions",
        "p50_ms", "p95_ms", "max_ms", "error"}``; ``mismatches`` counts rows whose prediction
        differs, ``error`` says why a check failed (None when it passed).

    Raises:
        serving.errors.ServingError: the endpoint does not exist or never answered.
    """
    from serving import Endpoint

    rows = _plain(samples)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"samples must be a non-empty list of rows, got {type(samples).__name__}")
    want = None if expected is None else _plain(expected)
    endpoint = Endpoint(name, namespace=namespace) if namespace else Endpoint(name)

    predictions = _first_predictions(endpoint, rows, timeout)
    latencies = []
    for row in rows[:LATENCY_REQUESTS]:
        start = time.perf_counter()
        endpoint.predictions([row])
        latencies.append((time.perf_counter() - start) * 1000.0)

    error = None
    examples: list[dict[str, Any]] = []
    mismatches = 0
    if len(predictions) != len(rows):
        error = f"endpoint {name!r} returned {len(predictions)} predictions for {len(rows)} rows"
        mismatches = len(rows)
    elif want is not None:
        if len(want) != len(rows):
            raise ValueError(
                f"expected has {len(want)} predictions but samples has {len(rows)} rows"
            )
        for index, (got, exp) in enumerate(zip(predictions, want, strict=True)):
            if not _same(got, exp, rel_tol, abs_tol):
                mismatches += 1
                if len(examples) < MAX_MISMATCH_EXAMPLES:
                    examples.append({"index": index, "expected": exp, "got": got})
        if mismatches:
            error = f"{mismatches} of {len(rows)} predictions differ from the expected ones"
    return {
        "name": name,
        "passed": error is None,
        "n_samples": len(rows),
        "mismatches": mismatches,
        "mismatch_examples": examples,
        "predictions": predictions,
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "max_ms": max(latencies),
        "error": error,
    }


def stop(name: str, namespace: str | None = None) -> None:
    """Stop and remove an endpoint (local model servers, or the InferenceService).

    Args:
        name: Endpoint name.
        namespace: Kubernetes namespace, if not the default.
    """
    from serving.backends.base import get_backend

    get_backend().delete(name, namespace)


# --------------------------------------------------------------------------------------------
# helpers


def _artifact_kwargs(
    *, description: str, author: str | None, tags: Mapping[str, str] | None
) -> dict[str, Any]:
    """Keyword arguments for Model/Transformer, leaving unset ones to the artifacts layer."""
    kwargs: dict[str, Any] = {"description": description}
    if author is not None:
        kwargs["author"] = author
    if tags:
        kwargs["tags"] = {str(k): str(v) for k, v in tags.items()}
    return kwargs


def _as_id(value: Any, field: str) -> int:
    """An MLMD id as an int; refuses what is clearly not one (a name, a float like 3.5)."""
    if isinstance(value, bool):
        raise TypeError(f"{field} must be an artifact id (int), got {value!r}")
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{field} must be an artifact id (int) as returned by submit_model/"
            f"submit_transformer, got {value!r}"
        ) from None
    if as_int != value or as_int <= 0:
        raise TypeError(f"{field} must be a positive artifact id, got {value!r}")
    return as_int


def _local_path(uri: str) -> str:
    """A local filesystem path from an artifact uri (a plain path or ``file://`` URI)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _parse_serve_config(text: str) -> dict[str, Any] | None:
    """A serve_config given as JSON text (Kale pipeline parameters are scalars)."""
    if not text.strip():
        return None
    from serving.errors import ServeConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ServeConfigError(f"serve_config is not valid JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise ServeConfigError(f"serve_config must be a JSON object, got {text!r}")
    return value


def _plain(value: Any) -> Any:
    """numpy arrays/scalars and pandas objects as plain lists and numbers (JSON-safe)."""
    if hasattr(value, "to_numpy"):  # pandas DataFrame / Series
        value = value.to_numpy()
    if hasattr(value, "tolist"):  # numpy array or scalar
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _same(got: Any, expected: Any, rel_tol: float, abs_tol: float) -> bool:
    """Whether one served prediction matches the expected one (numbers within tolerance)."""
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(
            _same(g, e, rel_tol, abs_tol) for g, e in zip(got, expected, strict=True)
        )
    numbers = (int, float)
    if isinstance(got, numbers) and isinstance(expected, numbers):
        if isinstance(got, bool) or isinstance(expected, bool):
            return got == expected
        return math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    return got == expected


def _first_predictions(endpoint: Any, rows: list[Any], timeout: float) -> list[Any]:
    """The predictions for ``rows``, retrying while a just-Ready endpoint is not answering yet."""
    from serving.errors import ServingError

    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return _plain(endpoint.predictions(rows))
        except (ServingError, OSError) as e:
            if time.monotonic() >= deadline:
                raise ServingError(
                    f"endpoint {endpoint.name!r} did not answer within {timeout:.0f}s: {e}"
                ) from e
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile, rounded to 0.01 ms."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 2)
