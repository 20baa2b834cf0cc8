"""Where kfp-serve keeps its local state (MLMD SQLite file, snapshots, local endpoints)."""

import os
from pathlib import Path

HOME_ENV = "KFP_SERVE_HOME"
DEFAULT_HOME = Path("~/.kfp-serve")


def state_dir() -> Path:
    """The state directory: ``KFP_SERVE_HOME``, default ``~/.kfp-serve`` (created if missing)."""
    path = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
