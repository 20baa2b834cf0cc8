"""ServingRuntime resolution, as KServe's controller does it: the runtime named in
``spec.predictor.model.runtime`` gives the model server's image, command, args, env, resources
and securityContext.

Known runtimes: kfp-serve's own (``serving/runtimes/kfp-serve.yaml``, the ClusterServingRuntime
we ship; its image is ``KFP_SERVE_IMAGE`` when set, as for every other container of ours) and the
stock runtimes KServe installs for the frameworks kfp-serve saves models for, with the images and
args of KServe's default runtime manifests (``config/runtimes`` of the release below). Pure: no
engine, no network; the stock images need registry access to run.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from importlib import resources
from typing import Any

import yaml

from kfp_serve.serving import constants
from kfp_serve.serving.errors import ServingError

KFP_SERVE_RUNTIME = "kfp-serve"
#: The KServe release whose stock runtime images are used.
STOCK_TAG = "v0.15.2"
#: KServe's stock container settings (identical for these three runtimes).
_STOCK_SECURITY = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
_STOCK_RESOURCES = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}
_STOCK_ARGS = ["--model_name={{.Name}}", "--model_dir=/mnt/models", "--http_port=8080"]
#: Runtime name -> (image repository, args after the common ones).
STOCK_RUNTIMES = {
    "kserve-sklearnserver": ("kserve/sklearnserver", []),
    "kserve-xgbserver": ("kserve/xgbserver", ["--nthread=1"]),
    "kserve-lgbserver": ("kserve/lgbserver", ["--nthread=1"]),
}


@cache
def _kfp_serve_runtime() -> dict[str, Any]:
    text = resources.files("kfp_serve.serving.runtimes").joinpath("kfp-serve.yaml").read_text()
    return yaml.safe_load(text)


def runtime_container(name: str) -> dict[str, Any]:
    """The main container of the ServingRuntime called ``name`` (a fresh copy).

    Raises:
        ServingError: a runtime this backend does not know, naming the ones it does.
    """
    if name == KFP_SERVE_RUNTIME:
        container = copy.deepcopy(_kfp_serve_runtime()["spec"]["containers"][0])
        container["image"] = os.environ.get(constants.IMAGE_ENV) or container["image"]
        return container
    if name in STOCK_RUNTIMES and os.environ.get(constants.DOCKER_STOCK_RUNTIME_ENV) == (
        KFP_SERVE_RUNTIME
    ):
        return runtime_container(KFP_SERVE_RUNTIME)
    if name in STOCK_RUNTIMES:
        repository, extra = STOCK_RUNTIMES[name]
        return {
            "name": "kserve-container",
            "image": f"{repository}:{STOCK_TAG}",
            "args": [*_STOCK_ARGS, *extra],
            "securityContext": copy.deepcopy(_STOCK_SECURITY),
            "resources": copy.deepcopy(_STOCK_RESOURCES),
        }
    known = ", ".join(repr(n) for n in [KFP_SERVE_RUNTIME, *STOCK_RUNTIMES])
    raise ServingError(
        f"spec.predictor.model.runtime {name!r} is not a runtime the Docker backend knows: "
        f"use one of {known} (ServeConfig(predictor={{'runtime': 'kfp-serve'}}))"
    )


def render(arg: str, name: str) -> str:
    """A runtime arg with KServe's template fields filled in (``{{.Name}}``: the model name)."""
    return arg.replace("{{.Name}}", name).replace("{{ .Name }}", name)
