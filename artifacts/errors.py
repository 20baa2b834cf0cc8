"""Errors raised by the artifacts layer. Each says what went wrong and how to fix it.

The root, :class:`KfpServeError`, lives in :mod:`kfp_serve.errors` and is re-exported here.
"""

from kfp_serve.errors import KfpServeError

__all__ = [
    "ArtifactError",
    "InvalidNameError",
    "KfpServeError",
    "MetadataError",
    "SnapshotError",
]


class InvalidNameError(KfpServeError, ValueError):
    """A name that cannot be used as a Kubernetes/MLMD name."""


class ArtifactError(KfpServeError, ValueError):
    """A model or transformer that cannot be turned into an artifact."""


class MetadataError(KfpServeError):
    """ML Metadata could not be read or written."""


class AlreadyRecordedError(MetadataError):
    """The metadata store already holds a record with that unique (type, name)."""


class VersionConflictError(MetadataError):
    """The name+version is recorded with different content (a new version is needed)."""


class SnapshotError(KfpServeError):
    """A snapshot could not be taken, found, or verified."""
