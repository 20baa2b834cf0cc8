"""End-to-end kfp-serve pipelines, composed from ``components``.

``PIPELINES`` maps the CLI's pipeline names to the pipeline functions; each module also offers
``make_pipeline(ClusterOptions(...))`` for the Kubernetes additions a cluster needs (see
``kfp_serve.pipelines.cluster``). :func:`compile_pipelines` writes their IR YAML.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp_serve.pipelines import sklearn_rollout, sklearn_transformer, xgboost
from kfp_serve.pipelines.cluster import ClusterOptions

_MODULES = {
    sklearn_transformer.NAME: sklearn_transformer,
    xgboost.NAME: xgboost,
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
    return Path(path)


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
