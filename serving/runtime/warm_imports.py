"""What the warm pool's fork server imports before it forks any server (its ``preload``).

Imported once, in the fork server process that :mod:`multiprocessing` starts for the warm pool
(:func:`multiprocessing.set_forkserver_preload`); every server forked from it starts with these
modules loaded. Importing this module never raises: an import that fails with anything but
ImportError is recorded in :data:`ERROR`, and the pool then starts servers plainly.
"""

from __future__ import annotations

import gc
import importlib
import threading

#: What the servers import before they answer (optional ones may be missing).
MODULES = (
    "kfp_serve.serving.runtime.predictor",
    "kfp_serve.serving.runtime.transformer",
    "kfp_serve.serving.runtime.upstream",
    "kfp_serve.serving.runtime.http1",
    "kfp_serve.serving.runtime.kserve_package",
    # What multiprocessing's child set-up imports when it re-runs the pool's module.
    "kfp_serve.serving.backends.local.supervisor",
    "yaml",
    "joblib",
    "orjson",
    "sklearn",
    "sklearn.base",
    "sklearn.utils",
    "sklearn.linear_model",
    "sklearn.preprocessing",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.impute",
    "scipy.special",
    "sklearn.utils.extmath",
    "pandas",
    "xgboost",
    "uvicorn",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.websockets.auto",
    "httptools",
    "uvloop",
    "encodings.idna",
    "setproctitle",
)

#: Why forking from this process would not give a faithful server (None: it would).
ERROR: str | None = None


def _warm() -> str | None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        except Exception as e:  # noqa: BLE001 - refuse to fork rather than fork a mess
            return f"importing {name} failed: {e!r}"
    # fork() copies only the calling thread: a thread started by an import (holding a lock)
    # would leave every child with that lock held forever.
    if threading.active_count() != 1:
        return f"{threading.active_count()} threads after importing"
    return None


ERROR = _warm()
# Objects made so far are shared with every child and never collected there: the children's
# collections then do not touch (and so do not copy) those pages.
gc.collect()
gc.freeze()
