"""serve(): from MLMD artifacts (or objects, or a fitted estimator) to a Ready endpoint.

Resolution order: artifact → its snapshot (taken now if it has none) → the storage URI a server
loads from → the manifest from the builder → the backend. ``dry_run`` stops after the manifest.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

from kfp_serve.artifacts.errors import MetadataError
from kfp_serve.serving.config import ServeConfig
from kfp_serve.serving.isvc import Provenance, build_inference_service, check_name

if TYPE_CHECKING:
    from kfp_serve.artifacts import ArtifactRecord
    from kfp_serve.serving.endpoint import Endpoint

MODEL = "model"
TRANSFORMER = "transformer"


def serve(
    model: Any,
    transformer: Any = None,
    *,
    serve_config: ServeConfig | dict[str, Any] | str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 300.0,
    backend: str | None = None,
) -> Endpoint | dict[str, Any]:
    """Serve a model (and optionally a transformer) as a KServe InferenceService.

    Args:
        model: An MLMD artifact id; a reference ``"iris"`` (latest servable version),
            ``"iris:2.0.0"`` or ``"iris@champion"``; a ``kfp_serve.artifacts.Model``, an
            ArtifactRecord, or a fitted estimator (submitted and snapshotted first, for
            notebooks). Deprecated/archived versions are refused.
        transformer: Likewise for the transformer (``"name"``/``"name:version"``, no alias), or
            None for a predictor alone.
        serve_config: A ServeConfig, or a dict / JSON string of one.
        name: The endpoint (InferenceService) name; defaults to the model's name.
        namespace: Kubernetes namespace (cluster backend).
        dry_run: Return the manifest exactly as it would be applied; apply nothing.
        wait: Wait until the endpoint is Ready.
        timeout: Seconds to wait for Ready.
        backend: ``"local"`` or ``"kubernetes"`` (default from the environment).

    Returns:
        The manifest when ``dry_run``, else an ``Endpoint`` for the served model.
    """
    # Check the config before anything is submitted or snapshotted.
    cfg = ServeConfig.coerce(serve_config)
    if name is not None:
        check_name(name, "name")
    model_rec, model_alias = resolve_model(model, name=name)
    transformer_rec = (
        resolve_artifact(transformer, TRANSFORMER, name=f"{name or model_rec.name}-transformer")
        if transformer is not None
        else None
    )
    name = name or model_rec.name
    model_snapshot = ensure_snapshot(model_rec)
    transformer_snapshot = ensure_snapshot(transformer_rec) if transformer_rec else None
    manifest = build_inference_service(
        name,
        storage_uri(model_snapshot),
        model_rec.framework,
        transformer_uri=storage_uri(transformer_snapshot) if transformer_snapshot else None,
        serve_config=cfg,
        namespace=namespace,
        provenance=Provenance(
            model_id=model_rec.id,
            model_version=model_rec.version,
            model_name=model_rec.name,
            model_alias=model_alias,
            transformer_id=transformer_rec.id if transformer_rec else None,
            model_snapshot=model_snapshot,
            transformer_snapshot=transformer_snapshot,
        ),
    )
    if dry_run:
        return manifest

    from kfp_serve.artifacts.deployments import REPLACED
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.delivery import record_shares, replaced, serving_before
    from kfp_serve.serving.endpoint import Endpoint

    chosen = get_backend(backend)
    before = serving_before(chosen, name, namespace)
    status = chosen.apply(manifest, wait=wait, timeout=timeout)
    if change := replaced(name, before, model_rec):
        print(change, file=sys.stderr)
    # The namespace the backend applied to (a cluster's default comes from the kubeconfig or
    # the pod), so the record says where the endpoint really is.
    record_shares(
        status,
        namespace or status.namespace,
        REPLACED,
        latest=(model_rec.id, transformer_rec.id if transformer_rec else None),
    )
    return Endpoint(name, namespace, backend=chosen.name)


def resolve_model(value: Any, *, name: str | None = None) -> tuple[ArtifactRecord, str | None]:
    """The model version to serve and the alias it was named by (None without one).

    Accepts everything ``resolve_artifact`` does, plus references: ``"iris"`` (the latest
    servable version), ``"iris:2.0.0"`` and ``"iris@champion"``, or a ``ResolvedModel``.

    Raises:
        MetadataError: unknown reference; UnservableVersionError for a deprecated or archived
            version (also when named by id).
    """
    from kfp_serve import artifacts

    resolved = None
    if isinstance(value, artifacts.ResolvedModel):
        resolved = value
    elif isinstance(value, str):
        resolved = artifacts.resolve(value)
    if resolved is not None:
        artifacts.ensure_servable(resolved.name, resolved.version)
        return resolved.record, resolved.alias
    record = resolve_artifact(value, MODEL, name=name)
    artifacts.ensure_servable(record.name, record.version)
    return record, None


def resolve_artifact(value: Any, kind: str, *, name: str | None = None) -> ArtifactRecord:
    """The MLMD record behind ``value``, submitting it first when it is not recorded yet.

    A string is a reference: ``name`` (latest) or ``name:version``.
    """
    from kfp_serve import artifacts
    if isinstance(value, bool):
        raise MetadataError(f"{kind}: expected an artifact id, got {value!r}")
    if isinstance(value, str):
        ref = artifacts.parse_ref(value)
        if ref.alias is not None:
            raise MetadataError(
                f"{kind} {value!r}: aliases name model versions; name a {kind} as 'name' or "
                "'name:version'"
            )
        # Without missing_ok, find_artifact raises when nothing matches.
        return cast("ArtifactRecord", artifacts.find_artifact(ref.name, ref.version, kind=kind))
    if isinstance(value, int):
        record = artifacts.get_artifact(value)
    elif isinstance(value, artifacts.ArtifactRecord):
        record = value
    elif isinstance(value, (artifacts.Model, artifacts.Transformer)):
        record = artifacts.get_artifact(value.submit_artifact(allow_existing=True))
    else:
        record = _submit_fitted(value, kind, name)
    if record.kind != kind:
        raise MetadataError(
            f"{kind}: artifact {record.id} ({record.name!r}) is a {record.kind}, not a {kind}; "
            f"pass the id of a {kind} artifact"
        )
    return record


def _submit_fitted(obj: Any, kind: str, name: str | None) -> ArtifactRecord:
    """Submit a bare fitted estimator/transformer; the same object twice is the same artifact."""
    from kfp_serve import artifacts
    if name is None:
        raise MetadataError(
            f"{kind}: serving a bare fitted object needs name=...; or submit it first with "
            f"artifacts.{kind.title()}(...).submit_artifact()"
        )
    # A content-derived version: re-running a notebook cell reuses the artifact instead of
    # failing on a duplicate version or silently overwriting a released one.
    version = "auto-" + hashlib.sha256(pickle.dumps(obj)).hexdigest()[:12]
    if kind == MODEL:
        artifact = artifacts.Model(model=obj, name=name, version=version)
    else:
        artifact = artifacts.Transformer(name=name, transformer=obj, version=version)
    return artifacts.get_artifact(artifact.submit_artifact(allow_existing=True))


def ensure_snapshot(record: ArtifactRecord) -> str:
    """The artifact's snapshot URI, snapshotting (and linking) it first if it has none."""
    if record.snapshot_uri:
        return record.snapshot_uri
    from kfp_serve import artifacts
    return artifacts.snapshot_artifact(record.id).uri


def storage_uri(snapshot_uri: str) -> str:
    """The storageUri a model server loads a snapshot from.

    A ``pvc://`` snapshot is served from a new PVC hydrated from it (named deterministically,
    so a dry run shows the exact manifest); other snapshots are loaded where they are.
    """
    if urlparse(snapshot_uri).scheme == "pvc":
        from kfp_serve.artifacts.snapshots.pvc import serving_storage_uri

        return serving_storage_uri(snapshot_uri)
    return snapshot_uri
