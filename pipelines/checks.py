"""What every kfp-serve pipeline shares: its checks at compile time and its experiment name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

#: The experiment runs are recorded under unless the user names one; the same name the
#: Python API records under (``kfp_serve.artifacts.mlmd.current_run``), so one experiment
#: holds both.
DEFAULT_EXPERIMENT = "default"

#: Pipeline parameters that are artifact or endpoint names, and those that are versions.
NAME_PARAMS = ("model_name", "transformer_name", "endpoint_name")
VERSION_PARAMS = ("model_version", "transformer_version")


def run_inputs(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``ops.validate_run`` for a pipeline's parameter values."""
    return {
        "names": {k: params[k] for k in NAME_PARAMS if k in params},
        "versions": {k: params[k] for k in VERSION_PARAMS if k in params},
        "serve_config": params.get("serve_config"),
        "snapshot_store": params.get("snapshot_store") or "",
        "tags": params.get("tags"),
        "slices": params.get("slices"),
    }


def check_params(params: dict[str, Any]) -> None:
    """Validate a run's names, versions, ServeConfig and snapshot store (see ``validate``).

    Raises:
        ValueError: The first bad value, with the parameter's name.
    """
    from kfp_serve.components.ops import validate_run

    validate_run(**run_inputs(params))
    if params.get("gate"):
        from kfp_serve.serving.gated_rollout import load_gate

        load_gate(params["gate"])  # an unknown metric or min > max fails before any step runs


def defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """A pipeline function's parameter defaults."""
    return {
        name: p.default for name, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def checked_pipeline(func: Callable[..., Any], *, name: str, description: str) -> Any:
    """``dsl.pipeline`` over ``func`` once its constant defaults are checked.

    A bad default (a name KServe refuses, a ServeConfig typo) fails here, when the pipeline is
    defined or compiled, not in a run on a cluster. The docstring's Args become the
    parameters' descriptions in the KFP UI, each on one line.
    """
    from kfp import dsl

    from kfp_serve.components.defs._base import one_line_entries

    check_params(defaults(func))
    func.__doc__ = one_line_entries(func.__doc__)
    return dsl.pipeline(name=name, description=description)(func)
