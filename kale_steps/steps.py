"""Functions for Kale step cells: submit, snapshot, serve and smoke-test a model.

Kale runs every ``step:`` cell in its own pod and moves variables between steps by pickling them,
so each function here takes and returns plain values (ids, names, URLs, small dicts of numbers
and lists) that survive that trip unchanged. The heavy layers (``artifacts``, ``serving``, numpy,
scikit-learn, KServe) are imported inside the functions: ``import kfp_serve.kale_steps`` sits in a
notebook's ``imports`` cell, which Kale prepends to every step, and must cost nothing.

Run-linking: inside a KFP pod the artifacts layer records experiment and run contexts from the
environment; :func:`link_run` supplies the run id Kale's generated steps do not pass (from the
pod's ``pipeline/runid`` label). Locally the same calls use the embedded defaults (SQLite MLMD,
file snapshots, local model servers under ``KFP_SERVE_HOME``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kfp_serve.artifacts.metadata import POD_NAME_ENV, RUN_ID_ENV, RUN_ID_ENVS
from kfp_serve.errors import InputError

log = logging.getLogger(__name__)

#: The label KFP's API server puts on every pod of a run, holding the run id.
KFP_RUN_ID_LABEL = "pipeline/runid"


class StepInputError(InputError, TypeError):
    """An argument of a step helper of the wrong kind (e.g. a name where an id belongs); a
    TypeError too, as Python's own argument errors are."""


def submit_model(
    model: Any,
    name: str,
    version: str = "1.0.0",
    *,
    description: str = "",
    author: str | None = None,
    tags: Mapping[str, str] | None = None,
    allow_overwrite: bool = False,
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
        allow_overwrite: Replace what ``name``/``version`` holds if it differs (lineage keeps the
            earlier one). Without it, submitting identical content again (a re-run cell or
            a retried step) returns the existing id, and different content is an error.

    Returns:
        The MLMD id of the Model artifact (an ``int``).

    Raises:
        kfp_serve.artifacts.errors.ArtifactError: ``model`` is not a supported, fitted model.
        kfp_serve.artifacts.errors.InvalidNameError: ``name`` or ``version`` is not valid.
        kfp_serve.artifacts.errors.MetadataError: ``name``/``version`` exists with other content.
    """
    from kfp_serve.artifacts import Model

    link_run()
    kwargs = _artifact_kwargs(description=description, author=author, tags=tags)
    artifact = Model(model=model, name=name, version=version, **kwargs)
    return _submit(artifact, allow_overwrite)


def submit_transformer(
    transformer: Any,
    name: str,
    version: str = "1.0.0",
    *,
    description: str = "",
    author: str | None = None,
    tags: Mapping[str, str] | None = None,
    allow_overwrite: bool = False,
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
        allow_overwrite: As for ``submit_model``.

    Returns:
        The MLMD id of the Transformer artifact (an ``int``).

    Raises:
        kfp_serve.artifacts.errors.ArtifactError: ``transformer`` has no ``transform`` or is not
        fitted.
        kfp_serve.artifacts.errors.InvalidNameError: ``name`` or ``version`` is not valid.
        kfp_serve.artifacts.errors.MetadataError: ``name``/``version`` exists with other content.
    """
    from kfp_serve.artifacts import Transformer

    link_run()
    kwargs = _artifact_kwargs(description=description, author=author, tags=tags)
    artifact = Transformer(name=name, transformer=transformer, version=version, **kwargs)
    return _submit(artifact, allow_overwrite)


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
        kfp_serve.artifacts.errors.MetadataError: no artifact has that id.
        kfp_serve.artifacts.errors.SnapshotError: the artifact's files cannot be read or stored.
    """
    from kfp_serve.artifacts import SnapshotStore, get_artifact, snapshot_artifact

    link_run()
    artifact_id = _as_id(artifact_id, "artifact_id")
    record = get_artifact(artifact_id)
    if record.snapshot_uri and not os.path.isdir(record.uri):
        # A later step (another pod) cannot see the directory any more; the snapshot it already
        # has is the one to use.
        return {
            "artifact_id": artifact_id,
            "uri": record.snapshot_uri,
            "digest": record.digest,
            "size": None,
        }
    snap = snapshot_artifact(artifact_id, SnapshotStore(store) if store else None)
    return {"artifact_id": artifact_id, "uri": snap.uri, "digest": snap.digest, "size": snap.size}


def serve(
    model_id: int | str,
    transformer_id: int | str | None = None,
    serve_config: Mapping[str, Any] | str | Any | None = None,
    name: str | None = None,
    *,
    namespace: str | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Serve a submitted model (and optional transformer) and wait until it is Ready.

    Locally this starts KServe model servers on 127.0.0.1; in a cluster it applies an
    InferenceService. Serving the same name again replaces the endpoint. An artifact without a
    snapshot is snapshotted first.

    Args:
        model_id: The Model artifact id from ``submit_model``, or a model reference:
            ``"iris"`` (latest servable version), ``"iris:2.0.0"`` or ``"iris@champion"``.
        transformer_id: The Transformer artifact id from ``submit_transformer`` (or its
            ``"name"``/``"name:version"``), if any.
        serve_config: A ``kfp_serve.serving.ServeConfig``, a dict, or a JSON string (handy as a Kale
            pipeline parameter), e.g. ``{"limits": {"memory": "1Gi"}}``.
        name: Endpoint name (DNS-1123 label); default: the model artifact's name.
        namespace: Kubernetes namespace; default: the pod's own, or the kube context's.
        timeout: Seconds to wait for the endpoint to become Ready.

    Returns:
        ``{"name", "url", "namespace", "model_id", "transformer_id"}``: the ids actually
        served (a reference resolved when the step ran).

    Raises:
        kfp_serve.artifacts.errors.MetadataError: no artifact has ``model_id``/``transformer_id``.
        kfp_serve.serving.errors.ServeConfigError: ``serve_config`` has an unknown or invalid field.
        kfp_serve.serving.errors.ServingError: the endpoint did not become Ready in time.
    """
    # The function, not ``kfp_serve.serving.serve``: that attribute turns into the submodule of the
    # same
    # name once the submodule has been imported.
    from kfp_serve.artifacts.aliases import resolve
    from kfp_serve.serving.deploy import TRANSFORMER, resolve_artifact
    from kfp_serve.serving.deploy import serve as serve_model

    link_run()
    # A reference is resolved once, here: the id returned is the version that was served even if
    # the alias moves later.
    model: Any = resolve(model_id) if _is_ref(model_id) else _as_id(model_id, "model_id")
    model_id = model if isinstance(model, int) else model.artifact_id
    if _is_ref(transformer_id):
        transformer_id = resolve_artifact(transformer_id, TRANSFORMER).id
    elif transformer_id is not None:
        transformer_id = _as_id(transformer_id, "transformer_id")
    endpoint = serve_model(
        model,
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
        "namespace": endpoint.namespace,
        "model_id": model_id,
        "transformer_id": transformer_id,
    }


def smoke_predict(
    name: str,
    samples: Any,
    expected: Any,
    *,
    output: str | None = None,
    namespace: str | None = None,
    tolerance: float = 1e-6,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Send each sample to an endpoint and compare the answers with the expected predictions.

    Each row is its own request (so the latencies are per prediction), retried while a
    just-Ready endpoint is not answering yet (kserve/kserve#1658).

    Args:
        name: Endpoint name, as ``serve`` returned it.
        samples: Rows of raw features (list of lists, numpy array or DataFrame).
        expected: What the notebook's own model predicts for ``samples``, one per row.
        output: ``"label"`` (exact comparison) or ``"value"`` (within ``tolerance``); default:
            labels when every expected prediction is an int, str or bool, else values.
        namespace: Kubernetes namespace of the endpoint, if not the default.
        tolerance: Relative and absolute tolerance for ``"value"`` predictions.
        timeout: Seconds before giving up on an endpoint that does not answer.

    Returns:
        ``{"name", "passed", "verdict", "message", "n_samples", "mismatches",
        "mismatch_examples", "p50_ms", "p99_ms", "max_ms"}``: ``mismatches`` counts the
        answered rows whose prediction differs; ``verdict`` is ``blessed``, ``mismatch``,
        ``timeout`` or ``error``; ``message`` says what happened.

    Raises:
        kfp_serve.serving.errors.ServingError: no endpoint has that name.
        ValueError: ``samples`` and ``expected`` do not have one entry per row.
    """
    from kfp_serve.serving import Endpoint
    from kfp_serve.serving.smoke import OUTPUT_LABEL, OUTPUT_VALUE, check_predictions

    rows = _plain(samples)
    want = _plain(expected)
    if not isinstance(rows, list) or not rows:
        raise InputError(f"samples must be a non-empty list of rows, got {type(samples).__name__}")
    if not isinstance(want, list) or len(want) != len(rows):
        raise InputError(
            f"expected must hold one prediction per sample row ({len(rows)}), got {want!r:.80}"
        )
    if output is None:
        labels = all(isinstance(v, int | str | bool) for v in want)
        output = OUTPUT_LABEL if labels else OUTPUT_VALUE
    client = Endpoint(name, namespace=namespace) if namespace else Endpoint(name)
    result = check_predictions(
        client.predictions,
        rows,
        want,
        output=output,
        tolerance=tolerance,
        deadline_s=timeout,
        endpoint=name,
    )
    return {
        "name": name,
        "passed": result.blessed,
        "verdict": result.verdict,
        "message": result.message,
        "n_samples": len(rows),
        "mismatches": result.n_requests - result.n_matched,
        "mismatch_examples": _plain(result.mismatches),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "max_ms": round(max(result.latencies_ms, default=0.0), 2),
    }


def stop(name: str, namespace: str | None = None) -> None:
    """Stop and remove an endpoint (local model servers, or the InferenceService); its
    lineage in ML Metadata records that it stopped serving.

    Args:
        name: Endpoint name.
        namespace: Kubernetes namespace, if not the default.
    """
    from kfp_serve.serving.delivery import stop as stop_endpoint

    stop_endpoint(name, namespace)


def link_run(read_pod_labels: Callable[[str, str], Mapping[str, str]] | None = None) -> str | None:
    """Make what this process records in MLMD part of the KFP run it runs in, if any.

    Kale's generated components pass no run id to the step, but KFP labels every pod of a run
    with it (``pipeline/runid``). Inside a pod without ``KFP_SERVE_RUN_ID``/``KFP_RUN_ID``, the
    pod's own labels are read once and the run id is exported for the artifacts layer. Outside
    a pod, or when the pod cannot be read (no RBAC for ``get pods``), nothing changes and the
    artifacts layer uses its own fallback (the pod name, or a per-process local run).

    Args:
        read_pod_labels: ``(pod, namespace) -> labels``; default reads them with the in-cluster
            Kubernetes client (injectable for tests).

    Returns:
        The run id the artifacts layer will record under, or None when it picks its own.
    """
    for name in RUN_ID_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    from kfp_serve.artifacts.environment import pod_namespace, running_in_pod

    if not running_in_pod():
        return None
    pod = os.environ.get(POD_NAME_ENV) or os.environ.get("HOSTNAME")
    namespace = pod_namespace()
    if not pod or not namespace:
        return None
    try:
        labels = (read_pod_labels or _read_pod_labels)(pod, namespace)
    except Exception as e:  # noqa: BLE001 - best effort: recording must not fail on lineage
        log.info("kfp-serve: cannot read pod %s/%s to find the KFP run id: %s", namespace, pod, e)
        return None
    run_id = (labels or {}).get(KFP_RUN_ID_LABEL)
    if run_id:
        os.environ[RUN_ID_ENV] = run_id
    return run_id or None


# --------------------------------------------------------------------------------------------
# helpers


def _read_pod_labels(pod: str, namespace: str, api_client: Any = None) -> Mapping[str, str]:
    """The labels of a pod, read with the pod's service account (or ``api_client``)."""
    from kubernetes import client

    from kfp_serve.artifacts.kube import client_configuration

    api_client = api_client or client.ApiClient(client_configuration())
    found = client.CoreV1Api(api_client).read_namespaced_pod(pod, namespace, _request_timeout=5)
    return found.metadata.labels or {}


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


def _submit(artifact: Any, allow_overwrite: bool) -> int:
    """Submit to MLMD; without ``allow_overwrite`` identical content returns the existing id."""
    # A re-run notebook cell or a retried pipeline step submits the same bytes again: that is
    # the same artifact, not a conflicting version.
    submitted = artifact.submit_artifact(
        allow_overwrite=allow_overwrite, allow_existing=not allow_overwrite
    )
    return int(submitted)


def _is_ref(value: Any) -> bool:
    """A model/transformer reference string ("iris@champion"), not an id ("3" from a param)."""
    return isinstance(value, str) and not value.strip().isdigit()


def _as_id(value: Any, field: str) -> int:
    """An MLMD id as an int; refuses what is clearly not one (a name, a float like 3.5)."""
    if isinstance(value, bool):
        raise StepInputError(f"{field} must be an artifact id (int), got {value!r}")
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise StepInputError(
            f"{field} must be an artifact id (int) as returned by submit_model/"
            f"submit_transformer, got {value!r}"
        ) from None
    if as_int != value or as_int <= 0:
        raise StepInputError(f"{field} must be a positive artifact id, got {value!r}")
    return as_int


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
