"""The storage initializer of the Docker backend: runs in the kfp-serve image, as KServe's runs
in an init container, and fills the volume later mounted read-only at /mnt/models.

``python -m kfp_serve.serving.backends.docker.storage_init URI DEST`` downloads ``URI`` with
kserve-storage (the code of KServe's storage initializer) into ``DEST``; when ``URI`` is a
snapshot (its last part ``blake3-<hex>``) the copy is then re-hashed and refused, exit code 3,
unless it matches: a tampered or half-uploaded snapshot never reaches a model server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Exit code of a download that does not match its snapshot digest.
EXIT_MISMATCH = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__)
    parser.add_argument("uri")
    parser.add_argument("dest")
    args = parser.parse_args(argv)
    from kserve_storage import Storage

    Storage.download(args.uri, args.dest)
    from kfp_serve.artifacts.errors import SnapshotError
    from kfp_serve.artifacts.snapshots.base import (
        SNAPSHOT_NAME,
        split_snapshot_uri,
        verify_local_tree,
    )

    if SNAPSHOT_NAME.fullmatch(args.uri.rstrip("/").rsplit("/", 1)[-1]):
        try:
            verify_local_tree(Path(args.dest), split_snapshot_uri(args.uri)[2], args.uri)
        except SnapshotError as e:
            print(f"storage-initializer: {e}", file=sys.stderr)
            return EXIT_MISMATCH
        print(f"storage-initializer: {args.uri} verified", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
