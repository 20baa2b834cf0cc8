"""The decorator every kfp-serve component uses: one image, nothing installed at run time."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from kfp import dsl

from kfp_serve.serving.constants import DEFAULT_IMAGE, IMAGE_ENV

#: Docstring sections whose entries KFP turns into input/output descriptions.
_ENTRY_SECTIONS = ("Args:", "Returns:")


def component_image() -> str:
    """The image components run in: ``KFP_SERVE_IMAGE`` at compile time, else the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def one_line_entries(doc: str | None) -> str:
    """``doc`` with each Args/Returns entry joined onto one line.

    KFP copies an entry's text verbatim, wrapped lines included, into the compiled YAML, and
    the KFP UI shows those line breaks mid-sentence; a description must read as one sentence.
    """
    out: list[str] = []
    entry_indent: int | None = None
    for line in inspect.cleandoc(doc or "").splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped or indent == 0 or not _in_section(out):
            entry_indent = None
            out.append(line)
        elif entry_indent is None or indent <= entry_indent:
            entry_indent = indent
            out.append(line)
        else:
            out[-1] = f"{out[-1]} {stripped}"
    return "\n".join(out)


def _in_section(out: list[str]) -> bool:
    """Whether the lines written so far end inside an Args/Returns section."""
    for line in reversed(out):
        if line.strip() in _ENTRY_SECTIONS:
            return True
        if line.strip() and not line.startswith(" "):
            return False
    return False


def component(func: Callable[..., Any]) -> Any:
    """``@component`` for kfp-serve.

    The image already holds kfp-serve and kfp, so neither ``packages_to_install`` nor kfp's own
    runtime ``pip install kfp`` is wanted (a pod without network access to PyPI must still run,
    and kfp.local must not pip-install into the venv).
    """
    func.__doc__ = one_line_entries(func.__doc__)
    return dsl.component(func, base_image=component_image(), install_kfp_package=False)
