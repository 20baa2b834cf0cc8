"""kfp-serve's KFP v2 components: train → submit → snapshot → serve → smoke_predict.

``from components import train`` gives the KFP component. Components load on first use, so
``import components`` costs next to nothing (kfp itself takes about half a second to import):
a pipeline pod that only needs ``components.ops`` never pays for the definitions.

Each component is a few lines over a plain function (``artifacts.training``, ``components.ops``,
``serving.smoke``) and runs in the image ``KFP_SERVE_IMAGE`` names at compile time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kfp.dsl.python_component import PythonComponent

#: Component name -> module defining it, in pipeline order.
_MODULES = {
    "train": "components.defs.train",
    "submit_model": "components.defs.submit",
    "submit_transformer": "components.defs.submit",
    "snapshot": "components.defs.snapshot",
    "serve": "components.defs.serve",
    "smoke_predict": "components.defs.smoke_predict",
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


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return get_component(name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
