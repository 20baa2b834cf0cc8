"""One registry of implementations per kind (serving backends, snapshot stores, metadata stores):
a built-in table of ``"module:Class"`` targets imported on first use, plus classes registered at
run time, which win over the table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module


class Implementations:
    """The implementations of one kind, by name (a URI scheme or a backend name).

    Args:
        builtin: Name -> ``"module:Class"``, imported only when that name is asked for.
        error: The exception type raised for an unknown or unimportable name.
        unknown: The message for an unknown name, given it and every known name (sorted).
        label: How a message names one implementation (``"the 's3://' snapshot store"``).
    """

    def __init__(
        self,
        builtin: Mapping[str, str],
        *,
        error: type[Exception],
        unknown: Callable[[str, list[str]], str],
        label: Callable[[str], str],
    ) -> None:
        self.builtin = dict(builtin)
        self.registered: dict[str, type] = {}
        self._error = error
        self._unknown = unknown
        self._label = label

    def register(self, name: str, cls: type) -> None:
        """Make ``cls`` the implementation called ``name`` (overrides the built-in table)."""
        self.registered[name] = cls

    def unregister(self, name: str) -> None:
        """Forget a class registered under ``name`` (the built-in one, if any, applies again)."""
        self.registered.pop(name, None)

    def names(self) -> list[str]:
        """Every name :meth:`get` accepts, sorted."""
        return sorted(set(self.builtin) | set(self.registered))

    def get(self, name: str) -> type:
        """The class called ``name``, imported on first use.

        Raises:
            The registry's error: no implementation has that name, or its module cannot be
            imported.
        """
        if name in self.registered:
            return self.registered[name]
        target = self.builtin.get(name)
        if target is None:
            raise self._error(self._unknown(name, self.names()))
        module, _, attr = target.partition(":")
        try:
            return getattr(import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise self._error(f"{self._label(name)} ({target}) is not available: {e}") from e
