"""kserve's model API for the runtimes, imported cheaply and without reading the command line.

See :mod:`kfp_serve.serving.runtime.kserve_package` for why (and how) ``kserve/__init__`` is
deferred.
Everything in kfp-serve imports ``kserve.Model`` and its errors from here.
"""

from __future__ import annotations

import sys
from types import ModuleType

from kfp_serve.serving.runtime.kserve_package import hidden_argv, lazy_kserve, suspended


def _import() -> ModuleType:
    fresh = "kserve" not in sys.modules
    package = lazy_kserve()
    try:
        with hidden_argv(), suspended(package):
            from kserve.model import Model
    except BaseException:
        if fresh:
            # Leave no half-made package behind: a later ``import kserve`` starts over.
            for name in [n for n in sys.modules if n == "kserve" or n.startswith("kserve.")]:
                del sys.modules[name]
        raise
    if "__getattr__" in package.__dict__:
        package.Model = Model
    return package


kserve = _import()

from kserve.errors import InvalidInput, ModelNotReady  # noqa: E402
from kserve.model import InferenceVerb  # noqa: E402
from kserve.protocol.infer_type import InferRequest  # noqa: E402

__all__ = ["kserve", "InvalidInput", "ModelNotReady", "InferenceVerb", "InferRequest"]
