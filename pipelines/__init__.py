"""End-to-end kfp-serve pipelines, composed from ``components``.

``PIPELINES`` maps the CLI's pipeline names to the pipeline functions; each module also offers
``make_pipeline(ClusterOptions(...))`` for the Kubernetes additions a cluster needs (see
``kfp_serve.pipelines.cluster``). :func:`compile_pipelines` writes their IR YAML.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp_serve.pipelines import sklearn_multi, sklearn_rollout, sklearn_transformer, xgboost
from kfp_serve.pipelines.cluster import ClusterOptions

_MODULES = {
    sklearn_transformer.NAME: sklearn_transformer,
    xgboost.NAME: xgboost,
    sklearn_multi.NAME: sklearn_multi,
    sklearn_rollout.NAME: sklearn_rollout,
}

#: CLI name -> pipeline function.
PIPELINES: dict[str, Callable[..., Any]] = {name: m.pipeline for name, m in _MODULES.items()}

__all__ = ["PIPELINES", "ClusterOptions", "compile_pipeline", "compile_pipelines", "get_pipeline"]


def get_pipeline(name: str, options: ClusterOptions | None = None) -> Callable[..., Any]:
    """The pipeline called ``name``, built with ``options`` when given."""
    if name not in _MODULES:
        raise KeyError(f"unknown pipeline {name!r}; choose one of {sorted(_MODULES)}")
    if options is None or not options.enabled:
        return PIPELINES[name]
    return _MODULES[name].make_pipeline(options)


def compile_pipeline(
    name: str, path: str | os.PathLike[str], options: ClusterOptions | None = None
) -> Path:
    """Compile pipeline ``name`` to IR YAML at ``path``."""
    from kfp import compiler

    compiler.Compiler().compile(get_pipeline(name, options), str(path))
    _stable_header(Path(path))
    return Path(path)


_HEADER_DEFAULT = re.compile(r"^(#\s+\w+: (?:list|dict) \[Default: )(.*)(\])$")


def _stable_header(path: Path) -> None:
    """Sort the keys of list/dict defaults in the compiled file's header comment.

    KFP prints them from a protobuf Struct, whose key order changes from one process to the
    next: unsorted, the same pipeline would compile to a different file every time.
    """
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = _HEADER_DEFAULT.match(line.rstrip("\n"))
        if match:
            value = _sorted_keys(ast.literal_eval(match.group(2)))
            lines[i] = f"{match.group(1)}{value!r}{match.group(3)}\n"
    path.write_text("".join(lines))


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def compile_pipelines(
    out_dir: str | os.PathLike[str], options: ClusterOptions | None = None
) -> list[Path]:
    """Compile every pipeline to ``out_dir/<module>.yaml``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        compile_pipeline(name, out / f"{module.__name__.rsplit('.', 1)[1]}.yaml", options)
        for name, module in _MODULES.items()
    ]
