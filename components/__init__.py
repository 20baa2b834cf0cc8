"""kfp-serve's KFP v2 components: validate → train → submit → snapshot → serve →
smoke_predict; serve_many → smoke_predict_many for many models behind one endpoint; and
rollout (a gated canary in place of serve).

``from kfp_serve.components import train`` gives the KFP component. Components load on first use, so
``import kfp_serve.components`` costs next to nothing (kfp itself takes about half a second to
import):
a pipeline pod that only needs ``kfp_serve.components.ops`` never pays for the definitions.

Each component is a few lines over a plain function (``kfp_serve.artifacts.training``,
``kfp_serve.components.ops``,
``kfp_serve.serving.smoke``) and runs in the image ``KFP_SERVE_IMAGE`` names at compile time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from kfp_serve._lazy import lazy_exports

if TYPE_CHECKING:
    from kfp.dsl.python_component import PythonComponent

#: Component name -> module defining it, in pipeline order.
_MODULES = {
    "validate": "kfp_serve.components.defs.validate",
    "train": "kfp_serve.components.defs.train",
    "submit_model": "kfp_serve.components.defs.submit",
    "submit_transformer": "kfp_serve.components.defs.submit",
    "snapshot": "kfp_serve.components.defs.snapshot",
    "serve": "kfp_serve.components.defs.serve",
    "serve_many": "kfp_serve.components.defs.serve_many",
    "smoke_predict": "kfp_serve.components.defs.smoke_predict",
    "smoke_predict_many": "kfp_serve.components.defs.smoke_predict_many",
    "rollout": "kfp_serve.components.defs.rollout",
}
COMPONENT_NAMES: tuple[str, ...] = tuple(_MODULES)

__all__ = ["COMPONENT_NAMES", "all_components", "get_component", *COMPONENT_NAMES]


def get_component(name: str) -> PythonComponent:
    """The component called ``name`` (one of :data:`COMPONENT_NAMES`)."""
    if name not in _MODULES:
        raise KeyError(f"unknown component {name!r}; choose one of {list(COMPONENT_NAMES)}")
    return getattr(import_module(_MODULES[name]), name)


def all_components() -> dict[str, PythonComponent]:
    """Every component by name, in pipeline order."""
    return {name: get_component(name) for name in COMPONENT_NAMES}


__getattr__, __dir__ = lazy_exports(globals(), _MODULES)
