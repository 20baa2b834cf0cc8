"""Register the ``kserve`` package with its ``__init__`` deferred: cheap kserve imports.

Two things are wrong with a plain ``import kserve`` in a model server:

- ``kserve/__init__.py`` imports the whole SDK: ``ModelServer`` (fastapi app, gRPC server,
  ray), ``KServeClient`` (the Kubernetes client) and about a hundred generated CRD classes.
  A runtime needs ``kserve.Model`` and its errors only; the rest is about 40 % of kserve's
  import time (~0.6 s of every server start, measured with ``python -X importtime``).
- ``kserve.model_server`` runs ``argparse.parse_known_args()`` on ``sys.argv`` at import time,
  so a runtime's own flags (``--predictor_protocol v3``, ``--http_port``...) would be parsed by
  kserve's parser too: it could exit the process on a value it does not know, and its
  module-level defaults would silently depend on our flags.

So, unless kserve is already imported, the ``kserve`` package is registered without running
its ``__init__`` (:func:`lazy_kserve`): ``kserve.model`` and friends import as usual (they only
use submodules); the generated CRD classes (``kserve.V1beta1PredictorSpec``, what a ServeConfig
is checked against) come from ``kserve.models`` alone (~0.1 s instead of ~1.8 s); the first
access to anything else on the package (``kserve.ModelServer``, ``from kserve import
KServeClient``) runs the real ``__init__`` then, with ``sys.argv`` hidden. Every name is the
same object either way. :mod:`kfp_serve.serving.runtime._kserve` uses it for the runtimes; a process
that only builds manifests calls :func:`lazy_kserve` before checking a ServeConfig.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def hidden_argv() -> Iterator[None]:
    """Hide the command line from code that parses it at import time (kserve.model_server)."""
    saved = sys.argv
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _complete(package: ModuleType) -> None:
    """Run kserve's real ``__init__`` in ``package`` (once)."""
    hook = package.__dict__.pop("__getattr__", None)
    if hook is None:
        return  # already completed (or completing: __init__ itself reads attributes)
    try:
        with hidden_argv():
            package.__spec__.loader.exec_module(package)
    except BaseException:
        package.__getattr__ = hook
        raise


@contextlib.contextmanager
def suspended(package: ModuleType) -> Iterator[None]:
    """No deferred ``__init__`` while kserve's own submodules import (``from . import x``
    looks ``x`` up on the package first: it must find nothing and import the submodule)."""
    hook = package.__dict__.pop("__getattr__", None)
    try:
        yield
    finally:
        if hook is not None and "__getattr__" not in package.__dict__:
            package.__getattr__ = hook


#: Prefixes of the generated client classes that ``kserve.models`` holds.
_MODEL_PREFIXES = ("V1alpha1", "V1beta1", "Knative", "NetUrl")


def lazy_kserve() -> ModuleType:
    """The ``kserve`` package, registered with its ``__init__`` deferred (see module doc).

    Returns the package that is already imported, if any (complete or lazy).

    Raises:
        ImportError: kserve is not installed.
    """
    package = sys.modules.get("kserve")
    if package is not None:
        return package
    spec = importlib.util.find_spec("kserve")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError("kserve is not installed")
    package = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562 module __getattr__
        if name.startswith("__"):
            raise AttributeError(name)
        if name.startswith(_MODEL_PREFIXES):
            # The generated classes only need kserve.models, not the SDK around them.
            with suspended(package):
                models = importlib.import_module("kserve.models")
            value = getattr(models, name, None)
            if value is not None:
                setattr(package, name, value)
                return value
        _complete(package)
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'kserve' has no attribute {name!r}") from None

    package.__getattr__ = __getattr__
    sys.modules["kserve"] = package
    return package


def kserve_models() -> ModuleType:
    """``kserve.models``, the generated client classes, without running the SDK's ``__init__``
    when it has not run yet. Look classes up here, not on the package: the complete package
    re-exports only some of them (``V1beta1LoggerStorageSpec`` is not among them)."""
    package = lazy_kserve()
    with suspended(package):
        return importlib.import_module("kserve.models")


__all__ = ["hidden_argv", "kserve_models", "lazy_kserve", "suspended"]
