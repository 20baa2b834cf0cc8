"""``s3://`` snapshots: content-addressed trees in an S3-compatible object store.

Layout: ``s3://bucket/prefix/blake3-<hex>/<relative path>`` for each file, and the manifest as
``…/blake3-<hex>/.kfp-snapshot.manifest``, uploaded *last*: a snapshot exists only once its
manifest does, so an interrupted upload is never visible (S3 has no rename). The snapshot URI
``s3://bucket/prefix/blake3-<hex>`` is also a KServe ``storageUri``.

Credentials come from the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, profiles, …) through boto3; the endpoint from ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT`` (KServe's variable, with ``S3_USE_HTTPS=0`` for http).
Opening a snapshot downloads it to ``$KFP_SERVE_HOME/cache/snapshots/s3/`` and verifies it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.errors import ArtifactError, SnapshotError
from kfp_serve.artifacts.snapshots.base import (
    Snapshot,
    copy_tree_verified,
    materialize,
    snapshot_dir_name,
    split_snapshot_uri,
    verify_local_tree,
)
from kfp_serve.artifacts.snapshots.cache import DigestCache
from kfp_serve.artifacts.snapshots.digest import (
    MANIFEST_NAME,
    Manifest,
    build_manifest,
    scan_tree,
    text_digest,
)
from kfp_serve.artifacts.snapshots.progress import ByteProgress

BOTO3_HINT = "pip install boto3"


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS itself."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    endpoint = os.environ.get("S3_ENDPOINT")
    if endpoint and "://" not in endpoint:
        https = os.environ.get("S3_USE_HTTPS", "1").lower() not in ("0", "false", "no")
        endpoint = ("https://" if https else "http://") + endpoint
    return endpoint or None


def s3_client(what: str = "s3:// snapshots") -> Any:
    """A boto3 S3 client configured from the environment (see the module docstring).

    Raises:
        SnapshotError: boto3 is not installed (the message says what needs it: ``what``).
    """
    try:
        import boto3
    except ImportError as e:
        raise SnapshotError(f"{what} need boto3, which is not installed: {BOTO3_HINT}") from e
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # A new session, not boto3's default one: that one keeps the credentials it found first,
    # and a process may set them later (a step, a test).
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=s3_endpoint(), region_name=region)


def read_object(uri: str) -> bytes:
    """The bytes of the object at ``s3://bucket/key``, read with the same S3 settings as an
    s3:// snapshot store (credentials and endpoint from the environment).

    Raises:
        ArtifactError: No such object or bucket, no or refused credentials, or no S3 server at
            the endpoint; the message names the variables to set.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        bucket, key = _split_root(uri)
    except SnapshotError as e:
        raise ArtifactError(f"{e} (s3://bucket/path/to/file.csv)") from e
    if not key:
        raise ArtifactError(f"{uri!r} names no object (s3://bucket/path/to/file.csv)")
    settings = (
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a server other "
        "than AWS (e.g. http://minio:9000): the same settings as an s3:// snapshot store"
    )
    try:
        client = s3_client("s3:// datasets")
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except SnapshotError as e:
        raise ArtifactError(str(e)) from e
    except NoCredentialsError as e:
        raise ArtifactError(f"cannot read {uri!r}: no S3 credentials; set {settings}") from e
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        if code in ("NoSuchKey", "404"):
            raise ArtifactError(f"{uri!r} does not exist (no object {key!r} in {bucket!r})") from e
        if code == "NoSuchBucket":
            raise ArtifactError(f"cannot read {uri!r}: there is no bucket {bucket!r}") from e
        raise ArtifactError(
            f"cannot read {uri!r}: S3 answered {code}; check {settings}"
        ) from e
    except BotoCoreError as e:
        where = s3_endpoint() or "AWS"
        raise ArtifactError(f"cannot read {uri!r} from {where}: {e}; set {settings}") from e


def _split_root(root: str) -> tuple[str, str]:
    """(bucket, key or prefix) of ``s3://bucket/key``."""
    if not root.startswith("s3://"):
        raise SnapshotError(f"{root!r} is not an s3:// URI (s3://bucket/prefix)")
    bucket, _, prefix = root[len("s3://") :].partition("/")
    if not bucket:
        raise SnapshotError(f"{root!r} names no bucket (s3://bucket/prefix)")
    return bucket, prefix.strip("/")


class S3SnapshotBackend:
    """Snapshots stored under ``s3://bucket/prefix``."""

    scheme = "s3"

    def __init__(self, root: str) -> None:
        self.bucket, self.prefix = _split_root(root.rstrip("/"))
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = s3_client()
        return self._s3

    def _key(self, digest: str, rel: str = "") -> str:
        parts = [p for p in (self.prefix, snapshot_dir_name(digest), rel) if p]
        return "/".join(parts)

    def uri_for(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self._key(digest)}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except S3UploadFailedError as e:  # boto3 wraps upload ClientErrors in this
            raise SnapshotError(
                f"S3 {what} failed: {e}. Check the bucket exists and AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL are right."
            ) from e
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "?")
            raise SnapshotError(
                f"S3 {what} failed in s3://{self.bucket} ({code}): {e}. Check the bucket exists "
                "and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL are right."
            ) from e
        except BotoCoreError as e:
            raise SnapshotError(
                f"S3 {what} failed for s3://{self.bucket}: {e}. Set AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and, for a non-AWS server, AWS_ENDPOINT_URL."
            ) from e

    def exists(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(digest, MANIFEST_NAME))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise SnapshotError(f"cannot read s3://{self.bucket}: {e}") from e

    def snapshot(self, path: Path, *, progress: bool | None = None) -> Snapshot:
        """Upload the tree at ``path`` unless a snapshot with its digest already exists."""
        src = Path(path).resolve()
        tree = scan_tree(src)
        total = tree.size
        # Unchanged since its last snapshot: one scan and one HEAD request.
        known = DigestCache(str(src)).tree_digest(tree.signature)
        if known is not None and self.exists(known):
            return Snapshot(self.uri_for(known), known, total)
        # S3 keys depend on the digest, so hash first (the digest cache makes this a stat pass
        # for files unchanged since they were last hashed) and upload afterwards.
        with ByteProgress(f"Hashing {src.name}", total, progress) as bar:
            manifest = build_manifest(src, progress=bar, use_cache=True, tree=tree)
        snap = Snapshot(self.uri_for(manifest.digest), manifest.digest, manifest.size)
        if self.exists(manifest.digest):
            return snap
        stats = {i.entry.path: i.st for i in tree.files}
        with ByteProgress(f"Uploading {src.name}", total, progress) as bar:
            for entry in manifest.files:
                self._call(
                    f"upload of {entry.path!r}",
                    self.s3.upload_file,
                    str(src / entry.path),
                    self.bucket,
                    self._key(manifest.digest, entry.path),
                    Callback=bar,
                )
                st = os.lstat(src / entry.path)
                before = stats[entry.path]
                if (st.st_size, st.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                    raise SnapshotError(f"{str(src / entry.path)!r} changed during upload; retry")
        # The manifest last: its presence is what makes the snapshot exist.
        self._call(
            "manifest upload",
            self.s3.put_object,
            Bucket=self.bucket,
            Key=self._key(manifest.digest, MANIFEST_NAME),
            Body=manifest.text.encode(),
        )
        return snap

    def _manifest(self, uri: str, digest: str) -> Manifest:
        body = self._call(
            f"read of {uri!r}",
            self.s3.get_object,
            Bucket=self.bucket,
            Key=self._key(digest, MANIFEST_NAME),
        )["Body"].read()
        # The digest is the hash of the manifest text: a tampered manifest is refused here,
        # and every file is then checked against the manifest as it is downloaded.
        if text_digest(body) != digest:
            raise SnapshotError(
                f"snapshot {uri!r} failed verification: its manifest does not match digest "
                f"{digest} (tampered); refusing it. Take a new snapshot."
            )
        return Manifest.parse(body.decode(), uri)

    def _check_uri(self, uri: str) -> str:
        scheme, root, digest = split_snapshot_uri(uri)
        if scheme != "s3":
            raise SnapshotError(f"{uri!r} is not an s3:// snapshot URI")
        if _split_root(root) != (self.bucket, self.prefix):
            raise SnapshotError(f"{uri!r} is not under this store's root {self.root!r}")
        return digest

    def _download(self, uri: str, digest: str, dest: Path) -> Manifest:
        manifest = self._manifest(uri, digest)
        dest.mkdir(parents=True)

        def fetch(entry: Any, target: Path) -> None:
            self._call(
                f"download of {entry.path!r}",
                self.s3.download_file,
                self.bucket,
                self._key(digest, entry.path),
                str(target),
            )

        with ByteProgress(f"Downloading {snapshot_dir_name(digest)[:19]}", manifest.size) as bar:
            materialize(manifest, dest, fetch, bar)
        (dest / MANIFEST_NAME).write_text(manifest.text)
        return manifest

    def verify(self, uri: str) -> Snapshot:
        self.open(uri)
        digest = self._check_uri(uri)
        return Snapshot(uri, digest, self._manifest(uri, digest).size)

    def open(self, uri: str) -> Path:
        """Download (once) into the local cache and return the verified directory."""
        from kfp_serve.artifacts.home import state_dir

        digest = self._check_uri(uri)
        cache = state_dir() / "cache" / "snapshots" / "s3" / snapshot_dir_name(digest)
        if cache.is_dir():
            try:
                verify_local_tree(cache, digest, uri)
                return cache
            except SnapshotError:
                shutil.rmtree(cache, ignore_errors=True)  # damaged local copy: fetch again
        tmp = cache.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self._download(uri, digest, tmp)
            try:
                os.rename(tmp, cache)
            except OSError:
                if not cache.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent open won
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        verify_local_tree(cache, digest, uri)
        return cache

    def restore(self, uri: str, dest: Path) -> Path:
        local = self.open(uri)
        return copy_tree_verified(local, Path(dest), self._check_uri(uri), uri)
