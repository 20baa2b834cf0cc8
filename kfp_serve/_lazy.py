"""Lazy package attributes: a package names its public objects and the modules that define
them, and each loads on first use, so ``import kfp_serve`` (or any of its packages) costs next to
nothing while ``dir()`` and tab completion still list every public name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(
    package: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose ``exports`` maps each public name
    to the module that defines it.

    Args:
        package: The package's ``globals()``; a loaded attribute is stored there, so later
            lookups skip ``__getattr__``.
        exports: Public name -> defining module (``"kfp_serve.serving.config"``).
    """
    name = package["__name__"]

    def __getattr__(attr: str) -> Any:
        try:
            module = exports[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None
        value = getattr(import_module(module), attr)
        package[attr] = value
        return value

    def __dir__() -> list[str]:
        # The public names only: what ``help()`` and tab completion should offer.
        return sorted(set(package.get("__all__", ())) | set(exports))

    return __getattr__, __dir__
