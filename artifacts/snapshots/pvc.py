"""``pvc://`` snapshots: artifacts on a PersistentVolumeClaim, frozen by a CSI VolumeSnapshot.

The open stand-in for Rok on a cluster. Root ``pvc://<pvc>/<prefix>``; inside a pod the PVC is
mounted at ``$KFP_SERVE_PVC_MOUNT`` (default ``/mnt/kfp-serve``). ``snapshot(path)``:

1. copies the tree into ``<mount>/<prefix>/blake3-<hex>`` exactly like the file:// store does
   (content-addressed, atomic rename, deduplicated, manifest inside), and flushes it to disk;
2. takes a ``snapshot.storage.k8s.io/v1`` VolumeSnapshot of the PVC (class from
   ``$KFP_SERVE_VOLUME_SNAPSHOT_CLASS``, else the cluster default), named after the PVC, prefix
   and digest, so the same tree is never snapshotted twice, and waits (watch) for readyToUse;
3. returns ``pvc://<pvc>/<prefix>/blake3-<hex>``: the snapshot URI names the directory, and the
   VolumeSnapshot name is a pure function of it (``volume_snapshot_name``).

Serving (``kfp_serve.serving.backends.kubernetes``) calls ``hydrate(uri, namespace, core_api)`` to
create
a PVC from the VolumeSnapshot (``dataSource``), and the manifest builder points ``storageUri``
at ``serving_storage_uri(uri)`` = ``pvc://<hydrated pvc>/<prefix>/blake3-<hex>``, also a pure
function, so ``serve(dry_run=True)`` shows the exact manifest.

``verify``/``open``/``restore`` read the tree from the mounted PVC and check its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.environment import pod_namespace
from kfp_serve.artifacts.errors import SnapshotError
from kfp_serve.artifacts.kube import (
    DOMAIN,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    client_configuration,
    default_namespace,
)
from kfp_serve.artifacts.snapshots.base import Snapshot, snapshot_dir_name, split_snapshot_uri
from kfp_serve.artifacts.snapshots.digest import digest_hex
from kfp_serve.artifacts.snapshots.file import FileSnapshotBackend
from kfp_serve.retry import retrying

MOUNT_ENV = "KFP_SERVE_PVC_MOUNT"
DEFAULT_MOUNT = "/mnt/kfp-serve"
SNAPSHOT_CLASS_ENV = "KFP_SERVE_VOLUME_SNAPSHOT_CLASS"
NAMESPACE_ENV = "KFP_SERVE_NAMESPACE"

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION = "v1"
SNAPSHOT_PLURAL = "volumesnapshots"
ANNOTATION_DIGEST = f"{DOMAIN}/digest"
ANNOTATION_SOURCE = f"{DOMAIN}/snapshot-uri"

DEFAULT_TIMEOUT = 600.0
_DEFAULT_SIZE = "1Gi"


@dataclass(frozen=True)
class PvcSnapshotRef:
    """The parts of ``pvc://<pvc>/<prefix>/blake3-<hex>``."""

    pvc: str
    prefix: str
    digest: str

    @property
    def directory(self) -> str:
        """Path of the tree inside the volume: ``<prefix>/blake3-<hex>``."""
        name = snapshot_dir_name(self.digest)
        return f"{self.prefix}/{name}" if self.prefix else name


def parse_snapshot_uri(uri: str) -> PvcSnapshotRef:
    """Split a pvc:// snapshot URI.

    Raises:
        SnapshotError: not a ``pvc://<pvc>/[<prefix>/]blake3-<hex>`` URI.
    """
    scheme, root, digest = split_snapshot_uri(uri)
    if scheme != "pvc":
        raise SnapshotError(f"{uri!r} is not a pvc:// snapshot URI")
    pvc, _, prefix = root[len("pvc://") :].partition("/")
    if not pvc:
        raise SnapshotError(f"{uri!r} names no PVC: expected pvc://<pvc>/<prefix>/blake3-<hex>")
    return PvcSnapshotRef(pvc, prefix.strip("/"), digest)


def is_pvc_snapshot_uri(uri: str) -> bool:
    """True for a ``pvc://…/blake3-<hex>`` snapshot URI (not for a plain pvc:// storage URI)."""
    try:
        parse_snapshot_uri(uri)
    except SnapshotError:
        return False
    return True


def _source_hash(ref: PvcSnapshotRef) -> str:
    # Two PVCs (or prefixes) may hold the same tree: their VolumeSnapshots must not collide.
    return hashlib.sha256(f"{ref.pvc}/{ref.prefix}".encode()).hexdigest()[:8]


def volume_snapshot_name(uri: str) -> str:
    """The VolumeSnapshot a pvc:// snapshot URI stands for (a DNS-1123 label, 58 chars)."""
    ref = parse_snapshot_uri(uri)
    return f"kfp-snap-{_source_hash(ref)}-{digest_hex(ref.digest)[:40]}"


def hydrated_pvc_name(uri: str) -> str:
    """The PVC that serving hydrates from the snapshot (deterministic, a DNS-1123 label)."""
    ref = parse_snapshot_uri(uri)
    return f"kfp-serve-{_source_hash(ref)}-{digest_hex(ref.digest)[:40]}"


def serving_storage_uri(snapshot_uri: str) -> str:
    """The InferenceService ``storageUri`` serving ``snapshot_uri``: the hydrated PVC's path.

    Pure (no API call), so a dry-run manifest is exactly the applied one.
    """
    ref = parse_snapshot_uri(snapshot_uri)
    return f"pvc://{hydrated_pvc_name(snapshot_uri)}/{ref.directory}"


class _Interrupted(Exception):
    """A watch that broke before the VolumeSnapshot was decided."""


def _decided(obj: dict[str, Any]) -> bool:
    """True once a VolumeSnapshot is ready to use or has failed."""
    status = obj.get("status") or {}
    return bool(status.get("readyToUse") or (status.get("error") or {}).get("message"))


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def hydrate(
    snapshot_uri: str, namespace: str, core_api: Any, *, request_timeout: float = 30.0
) -> str:
    """Create (idempotently) the PVC that serves ``snapshot_uri``; return its name.

    The PVC gets ``dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot}``,
    the snapshot's restore size, and the source PVC's storage class and access modes when the
    source PVC can still be read. Transient API errors (5xx, timeouts) propagate as raised by the
    client, for the caller to retry; an existing PVC from another source is an error.

    Args:
        snapshot_uri: ``pvc://<pvc>/<prefix>/blake3-<hex>``.
        namespace: where the InferenceService runs; the VolumeSnapshot must be there too.
        core_api: a ``kubernetes.client.CoreV1Api``.
        request_timeout: read timeout of each API request.

    Raises:
        SnapshotError: the VolumeSnapshot is missing or failed, or the PVC name is taken.
    """
    from kubernetes import client

    api_exception = _api_exception()
    ref = parse_snapshot_uri(snapshot_uri)
    snap_name = volume_snapshot_name(snapshot_uri)
    claim = hydrated_pvc_name(snapshot_uri)
    custom = client.CustomObjectsApi(core_api.api_client)
    timeout = (min(5.0, request_timeout), request_timeout)
    try:
        snap = custom.get_namespaced_custom_object(
            SNAPSHOT_GROUP,
            SNAPSHOT_VERSION,
            namespace,
            SNAPSHOT_PLURAL,
            snap_name,
            _request_timeout=timeout,
        )
    except api_exception as e:
        if e.status == 404:
            raise SnapshotError(
                f"VolumeSnapshot {snap_name!r} of {snapshot_uri!r} does not exist in namespace "
                f"{namespace!r}: a pvc:// snapshot can only be served in the namespace it was "
                "taken in, and only while its VolumeSnapshot exists (take the snapshot again)"
            ) from e
        raise
    snap_status = snap.get("status") or {}
    if (snap_status.get("error") or {}).get("message"):
        raise SnapshotError(
            f"VolumeSnapshot {snap_name!r} failed: {snap_status['error']['message']}"
        )
    size = snap_status.get("restoreSize")
    storage_class, access_modes = None, ["ReadWriteOnce"]
    try:
        source = core_api.read_namespaced_persistent_volume_claim(
            ref.pvc, namespace, _request_timeout=timeout
        )
        storage_class = source.spec.storage_class_name
        access_modes = source.spec.access_modes or access_modes
        requests = (source.spec.resources.requests or {}) if source.spec.resources else {}
        size = size or requests.get("storage")
    except api_exception as e:
        if e.status != 404:
            raise  # a deleted source PVC is fine: the snapshot outlives it
    body = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
            "annotations": {ANNOTATION_SOURCE: snapshot_uri, ANNOTATION_DIGEST: ref.digest},
        },
        "spec": {
            "accessModes": access_modes,
            "resources": {"requests": {"storage": size or _DEFAULT_SIZE}},
            "dataSource": {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": snap_name},
        },
    }
    if storage_class:
        body["spec"]["storageClassName"] = storage_class
    try:
        core_api.create_namespaced_persistent_volume_claim(
            namespace, body, _request_timeout=timeout
        )
    except api_exception as e:
        if e.status != 409:
            raise
        existing = core_api.read_namespaced_persistent_volume_claim(
            claim, namespace, _request_timeout=timeout
        )
        source = existing.spec.data_source
        if source is None or source.kind != "VolumeSnapshot" or source.name != snap_name:
            raise SnapshotError(
                f"PVC {claim!r} in namespace {namespace!r} exists but was not hydrated from "
                f"VolumeSnapshot {snap_name!r}; delete it or rename it"
            ) from e
    return claim


def _kube_clients(namespace: str | None) -> tuple[Any, str]:
    """(ApiClient, namespace) from the in-cluster config in a pod, else the kubeconfig."""
    from kubernetes import client, config

    try:
        cfg = client_configuration()
    except (config.ConfigException, OSError) as e:
        raise SnapshotError(f"pvc:// snapshots need access to the Kubernetes API: {e}") from e
    ns = namespace or os.environ.get(NAMESPACE_ENV) or default_namespace() or "default"
    return client.ApiClient(cfg), ns


class PvcSnapshotBackend:
    """Snapshots on a mounted PVC, each frozen by a CSI VolumeSnapshot.

    Args:
        root: ``pvc://<pvc>/<prefix>``.
        mount: where the PVC is mounted (default ``$KFP_SERVE_PVC_MOUNT`` or /mnt/kfp-serve).
        namespace: namespace of the PVC (default: the pod's, else the kubeconfig context's).
        api_client: a ``kubernetes.client.ApiClient`` (default: in-cluster or kubeconfig).
        timeout: seconds to wait for a VolumeSnapshot to become readyToUse.
    """

    scheme = "pvc"

    def __init__(
        self,
        root: str,
        *,
        mount: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        api_client: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        rest = root[len("pvc://") :] if root.startswith("pvc://") else ""
        pvc, _, prefix = rest.partition("/")
        if not pvc:
            raise SnapshotError(f"{root!r} is not a pvc:// snapshot root: use pvc://<pvc>/<prefix>")
        self.pvc = pvc
        self.prefix = prefix.strip("/")
        self.root = f"pvc://{pvc}/{self.prefix}" if self.prefix else f"pvc://{pvc}"
        self.mount = Path(mount or os.environ.get(MOUNT_ENV) or DEFAULT_MOUNT)
        self._namespace = namespace
        self._api_client = api_client
        self.timeout = timeout
        local = self.mount / self.prefix if self.prefix else self.mount
        self._local = FileSnapshotBackend(f"file://{local.resolve()}")

    def uri_for(self, digest: str) -> str:
        """The snapshot URI of the tree with ``digest`` under this root."""
        return f"{self.root}/{snapshot_dir_name(digest)}"

    def exists(self, digest: str) -> bool:
        return self._local.exists(digest)

    def _clients(self) -> tuple[Any, str]:
        if self._api_client is None:
            self._api_client, ns = _kube_clients(self._namespace)
            self._namespace = self._namespace or ns
        elif self._namespace is None:
            self._namespace = os.environ.get(NAMESPACE_ENV) or pod_namespace() or "default"
        return self._api_client, self._namespace

    def snapshot(self, path: Path, *, progress: bool | None = None) -> Snapshot:
        """Copy ``path`` onto the PVC (deduplicated) and freeze it with a VolumeSnapshot.

        Raises:
            SnapshotError: the PVC is not mounted, the VolumeSnapshot failed or timed out.
        """
        if not self.mount.is_dir():
            raise SnapshotError(
                f"PVC {self.pvc!r} is not mounted at {str(self.mount)!r}: mount it in the step's "
                f"pod there, or set {MOUNT_ENV} to where it is mounted"
            )
        local = self._local.snapshot(Path(path), progress=progress)
        # A CSI snapshot copies blocks: data still in this node's page cache would be missing.
        os.sync()
        uri = self.uri_for(local.digest)
        self._ensure_volume_snapshot(uri)
        return Snapshot(uri, local.digest, local.size)

    def _ensure_volume_snapshot(self, uri: str) -> dict[str, Any]:
        import urllib3
        from kubernetes import client, watch

        api_exception = _api_exception()
        api_client, namespace = self._clients()
        custom = client.CustomObjectsApi(api_client)
        name = volume_snapshot_name(uri)
        where = (SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, SNAPSHOT_PLURAL)
        body: dict[str, Any] = {
            "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
            "kind": "VolumeSnapshot",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {LABEL_MANAGED_BY: MANAGED_BY},
                "annotations": {
                    ANNOTATION_SOURCE: uri,
                    ANNOTATION_DIGEST: parse_snapshot_uri(uri).digest,
                },
            },
            "spec": {"source": {"persistentVolumeClaimName": self.pvc}},
        }
        snapshot_class = os.environ.get(SNAPSHOT_CLASS_ENV)
        if snapshot_class:
            body["spec"]["volumeSnapshotClassName"] = snapshot_class
        deadline = time.monotonic() + self.timeout
        try:
            obj = custom.create_namespaced_custom_object(*where, body)
        except api_exception as e:
            if e.status != 409:
                raise SnapshotError(
                    f"cannot create VolumeSnapshot {name!r} of PVC {self.pvc!r} in namespace "
                    f"{namespace!r}: {e.status} {e.reason}: {(e.body or '')[:300]}"
                ) from e
            # Taken before (the same tree): reuse it.
            obj = custom.get_namespaced_custom_object(*where, name)

        def watch_once() -> None:
            """Follow the snapshot until it is decided or the watch ends by itself.

            Raises:
                _Interrupted: the watch broke; ``obj`` is as fresh as can be known.
            """
            nonlocal obj
            if _decided(obj):
                return
            w = watch.Watch()
            try:
                left = max(0.01, deadline - time.monotonic())
                for event in w.stream(
                    custom.list_namespaced_custom_object,
                    *where,
                    field_selector=f"metadata.name={name}",
                    resource_version=obj["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, min(60, math.ceil(left))),
                    _request_timeout=(5.0, left + 1),
                ):
                    if event["type"] == "DELETED":
                        raise SnapshotError(f"VolumeSnapshot {name!r} was deleted while waiting")
                    obj = event["raw_object"]
                    if _decided(obj):
                        return
            except api_exception as e:
                # History compacted (410) or a server hiccup: re-read and watch again.
                obj = custom.get_namespaced_custom_object(*where, name)
                raise _Interrupted from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise _Interrupted from e  # watch again from the same version
            finally:
                w.stop()

        while True:  # each pass one watch, until the snapshot is decided or time is up
            status = obj.get("status") or {}
            if status.get("readyToUse"):
                return obj
            if (status.get("error") or {}).get("message"):
                raise SnapshotError(
                    f"VolumeSnapshot {name!r} of PVC {self.pvc!r} failed: "
                    f"{status['error']['message']} (kubectl describe volumesnapshot {name} "
                    f"-n {namespace})"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SnapshotError(
                    f"VolumeSnapshot {name!r} of PVC {self.pvc!r} was not readyToUse within "
                    f"{self.timeout:.0f}s (kubectl describe volumesnapshot {name} -n {namespace})"
                )
            # Out of time while interrupted: reported at the top of the loop.
            with contextlib.suppress(_Interrupted):
                retrying(
                    deadline=remaining, on=_Interrupted, first_wait=0.2, max_wait=0.2
                )(watch_once)

    def _file_uri(self, uri: str) -> str:
        ref = parse_snapshot_uri(uri)
        if ref.pvc != self.pvc or ref.prefix != self.prefix:
            raise SnapshotError(
                f"{uri!r} is not under {self.root!r}: only snapshots on the PVC mounted at "
                f"{str(self.mount)!r} can be read here"
            )
        return self._local.uri_for(ref.digest)

    def verify(self, uri: str) -> Snapshot:
        snap = self._local.verify(self._file_uri(uri))
        return Snapshot(uri, snap.digest, snap.size)

    def open(self, uri: str) -> Path:
        return self._local.open(self._file_uri(uri))

    def restore(self, uri: str, dest: Path) -> Path:
        return self._local.restore(self._file_uri(uri), Path(dest))
