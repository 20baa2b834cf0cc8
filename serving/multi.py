"""Many models behind one endpoint: ``serve_many``, ``add_model``, ``remove_model``.

A multi-model endpoint is KServe's: a parent InferenceService whose one model server hosts every
TrainedModel that names it (``serving/trained_model.py``). Models are added and removed while
the others keep serving; each declares the memory it needs, counted against the server's limit
(ServeConfig ``limits.memory``)::

    from kfp_serve import serve_many, add_model, remove_model
    ep = serve_many("regions", ["east", "west@champion", 42], {"limits": {"memory": "1Gi"}})
    ep.predict(rows, model="east")
    add_model(ep, "north:1.2.0", memory="128Mi")
    remove_model(ep, "west")

Each hosted model's deployment is recorded in MLMD against the endpoint, so its lineage says
which endpoint serves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kfp_serve.serving.config import ServeConfig
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.isvc import Provenance, _labels, check_name

if TYPE_CHECKING:
    from kfp_serve.artifacts import ArtifactRecord
    from kfp_serve.serving.backends.base import MultiModelBackend, TrainedModelStatus
    from kfp_serve.serving.endpoint import Endpoint

#: Memory a model declares when none is given: small scikit-learn/XGBoost models fit well within.
DEFAULT_MODEL_MEMORY = "64Mi"


def serve_many(
    name: str,
    model_refs: Iterable[Any],
    serve_config: ServeConfig | dict[str, Any] | str | None = None,
    *,
    memory: str | Mapping[str, str] | None = None,
    backend: str | None = None,
    wait: bool = True,
    namespace: str | None = None,
    timeout: float = 300.0,
    dry_run: bool = False,
) -> Endpoint | list[dict[str, Any]]:
    """Serve several models of one framework behind one endpoint.

    Declarative and idempotent: serving the same name again loads what changed (a new version
    under a name replaces the old one in place), unloads the models no longer named, and
    leaves the rest serving untouched.

    Args:
        name: The endpoint (parent InferenceService) name.
        model_refs: Models to host: MLMD ids, ``Model`` objects, ArtifactRecords, or references
            ``"name"``, ``"name:version"``, ``"name@alias"``. Each is served under its model
            name (``/v1/models/{name}``), so the names must differ.
        serve_config: The parent's ServeConfig (its ``limits.memory`` is the server's limit).
        memory: Memory each model declares: one quantity for all, or ``{model name: quantity}``
            (default ``DEFAULT_MODEL_MEMORY``).
        backend: ``"local"``, ``"docker"`` or ``"kubernetes"`` (default from the environment).
        wait: Wait until every model is ready (the endpoint itself is always awaited: models
            are loaded into its running server).
        namespace: Kubernetes namespace (cluster backend).
        timeout: Seconds each step may take to become ready.
        dry_run: Return the manifests exactly as they would be applied (the parent, then one
            TrainedModel per model; models are snapshotted, like ``serve(dry_run=True)``);
            apply nothing. For the Kubernetes backend the TrainedModels are checked against
            KServe's webhook rules, as the cluster would.

    Returns:
        An ``Endpoint``; ``endpoint.predict(rows, model="name")`` asks one hosted model. With
        ``dry_run``, the list of manifests.

    Raises:
        ServeConfigError: A bad name or config; models of different frameworks; two models
            with one name.
        ServingError: The endpoint did not start, or a model was refused (too little memory,
            a tampered snapshot): the error names each refused model and why; the models that
            loaded keep serving.
    """
    cfg = ServeConfig.coerce(serve_config)
    check_name(name, "name")
    resolved = [_resolve(ref) for ref in model_refs]
    if not resolved:
        raise ServingError(
            f"serve_many({name!r}): no models given; pass at least one id, Model or reference"
        )
    _check_distinct(resolved)
    framework = _one_framework(resolved)
    from kfp_serve.serving.trained_model import parent_inference_service

    parent = parent_inference_service(name, framework, serve_config=cfg, namespace=namespace)
    if dry_run:
        return [parent, *_dry_run_models(name, namespace, resolved, memory, backend)]
    chosen = _multi_backend(backend)
    # The parent is always awaited: its server must answer before models can be loaded in.
    chosen.apply(parent, wait=True, timeout=timeout)
    # Declarative, like apply: models the endpoint hosts but ``model_refs`` no longer names go.
    wanted = {record.name for record, _ in resolved}
    for hosted in chosen.list_trained_models(name, namespace):
        if hosted.name not in wanted:
            chosen.delete_trained_model(hosted.name, namespace)
    failures = []
    for record, alias in resolved:
        try:
            _load(chosen, name, namespace, record, alias, _memory_for(memory, record.name),
                  wait=wait, timeout=timeout)
        except ServingError as e:
            failures.append(f"{record.name!r}: {e}")
    if failures:
        raise ServingError(
            f"endpoint {name!r} is serving, but {len(failures)} of {len(resolved)} models were "
            "refused: " + "; ".join(failures)
        )
    from kfp_serve.serving.endpoint import Endpoint

    return Endpoint(name, namespace, backend=chosen)


def add_model(
    endpoint: Endpoint | str,
    model_ref: Any,
    *,
    memory: str | None = None,
    backend: str | None = None,
    namespace: str | None = None,
    wait: bool = True,
    timeout: float = 300.0,
) -> TrainedModelStatus:
    """Load one more model into a running multi-model endpoint (the others keep serving).

    Adding a model whose name the endpoint already hosts replaces it (another version).

    Args:
        endpoint: An ``Endpoint`` or an endpoint name.
        model_ref: An MLMD id, ``Model``, ArtifactRecord, or ``"name[:version|@alias]"``.
        memory: Memory it declares (default ``DEFAULT_MODEL_MEMORY``).
        backend: The backend, when ``endpoint`` is a name (default from the environment).
        namespace: Kubernetes namespace, when ``endpoint`` is a name.

    Returns:
        The model's status on the endpoint.

    Raises:
        ServingError: The endpoint is not a multi-model endpoint, or refused the model.
    """
    name, namespace, chosen = _target(endpoint, backend, namespace)
    parent = chosen.get(name, namespace)
    from kfp_serve.serving.trained_model import is_multi_model, parent_framework

    if not is_multi_model(parent.manifest):
        raise ServingError(
            f"endpoint {name!r} serves one model; create a multi-model endpoint with "
            f"serve_many({name!r}, [...]) (or `kfp-serve serve --multi {name} MODEL...`)"
        )
    record, alias = _resolve(model_ref)
    framework = parent_framework(parent.manifest)
    if record.framework != framework:
        raise ServingError(
            f"model {record.name!r} (id {record.id}) is a {record.framework} model; endpoint "
            f"{name!r} hosts {framework} models: serve it on another endpoint"
        )
    return _load(
        chosen, name, namespace, record, alias, memory or DEFAULT_MODEL_MEMORY,
        wait=wait, timeout=timeout,
    )


def remove_model(
    endpoint: Endpoint | str,
    model_name: str,
    *,
    backend: str | None = None,
    namespace: str | None = None,
) -> None:
    """Unload model ``model_name`` from a multi-model endpoint (the others keep serving).

    Raises:
        ServingError: The endpoint hosts no model of that name.
    """
    name, namespace, chosen = _target(endpoint, backend, namespace)
    hosted = {m.name for m in chosen.list_trained_models(name, namespace)}
    if model_name not in hosted:
        raise ServingError(
            f"endpoint {name!r} hosts no model named {model_name!r}; it hosts "
            f"{sorted(hosted) or 'none'}"
        )
    chosen.delete_trained_model(model_name, namespace)


def hosted_models(
    endpoint: Endpoint | str, *, backend: str | None = None, namespace: str | None = None
) -> list[TrainedModelStatus]:
    """The models a multi-model endpoint hosts: name, version, memory, readiness, reason."""
    name, namespace, chosen = _target(endpoint, backend, namespace)
    return chosen.list_trained_models(name, namespace)


# -- helpers ----------------------------------------------------------------------------------


def _resolve(ref: Any) -> tuple[ArtifactRecord, str | None]:
    from kfp_serve.serving.deploy import resolve_model

    return resolve_model(ref)


def _check_distinct(resolved: list[tuple[ArtifactRecord, str | None]]) -> None:
    seen: dict[str, str] = {}
    for record, _ in resolved:
        if record.name in seen:
            from kfp_serve.serving.errors import ServeConfigError

            raise ServeConfigError(
                f"model_refs: two models are named {record.name!r} (versions "
                f"{seen[record.name]!r} and {record.version!r}); one endpoint serves one "
                "version per name: pick one, or serve the other on another endpoint"
            )
        seen[record.name] = record.version


def _one_framework(resolved: list[tuple[ArtifactRecord, str | None]]) -> str:
    frameworks: dict[str, list[str]] = {}
    for record, _ in resolved:
        frameworks.setdefault(record.framework, []).append(record.name)
    if len(frameworks) > 1:
        from kfp_serve.serving.errors import ServeConfigError

        detail = "; ".join(f"{fw}: {', '.join(names)}" for fw, names in frameworks.items())
        raise ServeConfigError(
            f"model_refs: one multi-model endpoint hosts models of one framework, got {detail}; "
            "serve each framework on its own endpoint"
        )
    return next(iter(frameworks))


def _memory_for(memory: str | Mapping[str, str] | None, model: str) -> str:
    if memory is None:
        return DEFAULT_MODEL_MEMORY
    if isinstance(memory, str):
        return memory
    return memory.get(model, DEFAULT_MODEL_MEMORY)


def _multi_backend(backend: Any) -> MultiModelBackend:
    from kfp_serve.serving.backends.base import get_backend, supports_multi_model

    chosen = backend if backend is not None and not isinstance(backend, str) else get_backend(
        backend
    )
    if not supports_multi_model(chosen):
        raise ServingError(
            f"the {chosen.name!r} serving backend cannot host several models behind one "
            "endpoint; use the local or kubernetes backend"
        )
    return chosen  # type: ignore[return-value]


def _target(
    endpoint: Endpoint | str, backend: str | None, namespace: str | None
) -> tuple[str, str | None, MultiModelBackend]:
    if isinstance(endpoint, str):
        return endpoint, namespace, _multi_backend(backend)
    return endpoint.name, endpoint.namespace, _multi_backend(endpoint._backend)


def _load(
    chosen: MultiModelBackend,
    parent: str,
    namespace: str | None,
    record: ArtifactRecord,
    alias: str | None,
    memory: str,
    *,
    wait: bool,
    timeout: float,
) -> TrainedModelStatus:
    """Snapshot (if needed), build the TrainedModel, apply it, record the deployment."""
    from kfp_serve.artifacts import record_deployment

    manifest = _trained_model(parent, namespace, record, alias, memory)
    status = chosen.apply_trained_model(manifest, wait=wait, timeout=timeout)
    record_deployment(parent, namespace or status.namespace, record.id, None, status.url)
    return status


def _dry_run_models(
    parent: str,
    namespace: str | None,
    resolved: list[tuple[ArtifactRecord, str | None]],
    memory: str | Mapping[str, str] | None,
    backend: Any,
) -> list[dict[str, Any]]:
    """The TrainedModels ``serve_many`` would apply; on Kubernetes, admitted like the cluster's
    webhook would (a local endpoint also loads ``file://`` snapshots, which KServe does not)."""
    from kfp_serve.serving import admission
    from kfp_serve.serving.backends.base import KUBERNETES, default_backend_name

    target = getattr(backend, "name", backend) or default_backend_name()
    manifests = []
    for record, alias in resolved:
        memory_of = _memory_for(memory, record.name)
        manifest = _trained_model(parent, namespace, record, alias, memory_of)
        if target == KUBERNETES:
            admission.admit_trained_model(manifest)
        manifests.append(manifest)
    return manifests


def _trained_model(
    parent: str, namespace: str | None, record: ArtifactRecord, alias: str | None, memory: str
) -> dict[str, Any]:
    """The TrainedModel of ``record`` on ``parent`` (snapshotting it first if it has none)."""
    from kfp_serve.serving.deploy import ensure_snapshot, storage_uri
    from kfp_serve.serving.trained_model import trained_model_manifest

    snapshot = ensure_snapshot(record)
    return trained_model_manifest(
        record.name,
        parent,
        storage_uri=storage_uri(snapshot),
        framework=record.framework,
        memory=memory,
        namespace=namespace,
        labels=_labels(
            Provenance(
                model_id=record.id,
                model_version=record.version,
                model_name=record.name,
                model_alias=alias,
            )
        ),
    )
