"""What a manifest asks the local backend to run: a pure function of the manifest.

:func:`plan_manifest` reads an InferenceService manifest into a :class:`Plan` (which servers,
which artifacts, which model names, which environment, what share of traffic) and refuses, with
an error naming the field, anything that cannot run locally. :func:`split_traffic` decides how
requests are shared between revisions. Neither starts a process or touches a file, so both are
tested on plain dicts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kfp_serve.artifacts.names import validate_name
from kfp_serve.serving import constants
from kfp_serve.serving.constants import PREDICTOR, PROTOCOL_ENV, STORAGE_URI_ENV, TRANSFORMER
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.runtime.dataplane import component_env, serves_grpc

logger = logging.getLogger(__name__)

#: Env vars that choose a server's listen address: the local backend decides that, not the
#: manifest (``--http_host`` is passed explicitly as well). HTTP_HOST is kserve's own.
HOST_ENVS = frozenset({constants.HTTP_HOST_ENV, "HTTP_HOST"})


@dataclass
class ComponentPlan:
    """One server to start: its role, artifact, model name and environment."""

    role: str
    storage_uri: str
    model_name: str
    env: dict[str, str]
    predictor_protocol: str = "v1"

    @property
    def server_env(self) -> dict[str, str]:
        """The manifest's env for the server, minus anything that would move it off
        loopback."""
        return {k: v for k, v in self.env.items() if k not in HOST_ENVS}

    @property
    def grpc(self) -> bool:
        """True when the manifest turns the server's OIP gRPC on (its args)."""
        return serves_grpc(self.env)


@dataclass
class Plan:
    """The parts of an InferenceService manifest the local backend acts on."""

    name: str
    manifest: dict[str, Any]
    protocol: str
    predictor: ComponentPlan
    transformer: ComponentPlan | None
    canary_percent: int | None
    spec_hash: str
    model_ids: dict[str, str]
    #: A multi-model parent (no storageUri): its server starts empty and loads TrainedModels.
    multi_model: bool = False


def plan_manifest(manifest: dict[str, Any]) -> Plan:
    """Read what the local backend needs from ``manifest``; ServingError names a missing part."""
    if not isinstance(manifest, dict) or manifest.get("kind", "InferenceService") != (
        "InferenceService"
    ):
        raise ServingError(
            "the local backend runs InferenceService manifests: pass the dict that "
            "serve(..., dry_run=True) or build_inference_service() returns"
        )
    metadata = manifest.get("metadata") or {}
    name = validate_name(metadata.get("name"), "metadata.name")
    spec = manifest.get("spec") or {}
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        raise ServingError(f"InferenceService {name!r} has no spec.predictor")

    model = predictor.get("model")
    if model is None:
        # The older per-framework form (spec.predictor.sklearn / .xgboost) runs the same way.
        model = next((predictor[k] for k in ("sklearn", "xgboost") if k in predictor), None)
    multi_model = isinstance(model, dict) and not model.get("storageUri") and bool(
        model.get("modelFormat")
    )
    if isinstance(model, dict) and (model.get("storageUri") or multi_model):
        storage_uri = str(model.get("storageUri") or "")
        protocol = str(model.get("protocolVersion") or "v1")
        env = _plain_env(model.get("env"), name, "predictor")
    else:
        containers = predictor.get("containers") or []
        main = containers[0] if containers else {}
        env = _plain_env(main.get("env"), name, "predictor")
        storage_uri = env.get(STORAGE_URI_ENV) or _flag(main.get("args") or [], "--model_dir")
        if not storage_uri:
            raise ServingError(
                f"InferenceService {name!r}: the local backend needs spec.predictor.model."
                f"storageUri (or a {STORAGE_URI_ENV} env var on a custom predictor container); "
                "custom predictor images cannot run locally"
            )
        protocol = str(predictor.get("protocolVersion") or env.get(PROTOCOL_ENV) or "v1")
    if protocol not in ("v1", "v2"):
        raise ServingError(
            f"InferenceService {name!r}: protocolVersion {protocol!r} is not served locally; "
            "use 'v1' or 'v2'"
        )

    transformer_plan = None
    transformer = spec.get("transformer")
    if transformer and multi_model:
        raise ServingError(
            f"InferenceService {name!r}: a multi-model endpoint (no storageUri) has no "
            "transformer locally; put the preprocessing in each model's pipeline"
        )
    if transformer:
        containers = transformer.get("containers") or []
        if not containers:
            raise ServingError(f"InferenceService {name!r}: spec.transformer has no containers")
        main = containers[0]
        args = [str(a) for a in main.get("args") or []]
        t_env = _plain_env(main.get("env"), name, "transformer")
        t_uri = t_env.pop(STORAGE_URI_ENV, None) or _flag(args, "--storage_uri")
        if not t_uri:
            raise ServingError(
                f"InferenceService {name!r}: the transformer container has no {STORAGE_URI_ENV} "
                "env var saying where its artifact is"
            )
        transformer_plan = ComponentPlan(
            role=TRANSFORMER,
            storage_uri=t_uri,
            model_name=_flag(args, "--model_name") or name,
            env=t_env,
            predictor_protocol=_flag(args, "--predictor_protocol") or protocol,
        )

    canary = predictor.get("canaryTrafficPercent")
    if canary is not None and (not isinstance(canary, int) or not 0 <= canary <= 100):
        raise ServingError(
            f"InferenceService {name!r}: spec.predictor.canaryTrafficPercent {canary!r} must be "
            "an integer from 0 to 100"
        )
    labels = metadata.get("labels") or {}
    model_ids = {
        key: str(labels[label])
        for key, label in (
            ("model", constants.LABEL_MODEL_ID),
            ("transformer", constants.LABEL_TRANSFORMER_ID),
            ("model_version", constants.LABEL_MODEL_VERSION),
            ("model_name", constants.LABEL_MODEL_NAME),
            ("model_alias", constants.LABEL_MODEL_ALIAS),
        )
        if label in labels
    }
    # What the manifest asks of the data plane (batcher, logger, workers, gRPC, runtime).
    env.update(component_env(predictor, PREDICTOR, name))
    if transformer_plan is not None:
        transformer_plan.env.update(component_env(transformer, TRANSFORMER, name))
    return Plan(
        name=name,
        manifest=copy.deepcopy(manifest),
        protocol=protocol,
        predictor=ComponentPlan(PREDICTOR, storage_uri, name, env, protocol),
        transformer=transformer_plan,
        canary_percent=canary,
        spec_hash=_spec_hash(manifest),
        model_ids=model_ids,
        multi_model=multi_model,
    )


def _spec_hash(manifest: dict[str, Any]) -> str:
    """A digest of what makes a revision: the spec (minus traffic) and identifying metadata."""
    spec = copy.deepcopy(manifest.get("spec") or {})
    for component in spec.values():
        if isinstance(component, dict):
            component.pop("canaryTrafficPercent", None)
    metadata = manifest.get("metadata") or {}
    annotations = dict(metadata.get("annotations") or {})
    # The recorded ServeConfig repeats the spec, canary percentage included: leave it out, or
    # promoting a canary would look like a new revision.
    annotations.pop(constants.ANNOTATION_SERVE_CONFIG, None)
    ident = {"spec": spec, "labels": metadata.get("labels") or {}, "annotations": annotations}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _plain_env(env: Iterable[dict[str, Any]] | None, name: str, role: str) -> dict[str, str]:
    """The literal env vars of a container; secret references are skipped (by name only)."""
    result: dict[str, str] = {}
    for var in env or []:
        key = var.get("name")
        if not key:
            continue
        if "value" in var and var["value"] is not None:
            result[str(key)] = str(var["value"])
        elif "valueFrom" in var:
            # Secrets and config maps do not exist locally; never log what they would hold.
            logger.info(
                "endpoint %r %s: env %s comes from a valueFrom reference and is not set locally",
                name,
                role,
                key,
            )
    return result


def _flag(args: list[str], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in a container's args."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def split_traffic(stable: int | None, new: int, canary_percent: int | None) -> dict[str, int]:
    """Percent of requests per revision (JSON keys: revision numbers as strings).

    Args:
        stable: The revision that serves now and stays beside a canary (None: there is none, or
            it has exited).
        new: The revision being rolled out.
        canary_percent: ``spec.predictor.canaryTrafficPercent`` (None or 100: all to ``new``).
            A 0% canary keeps running with no traffic, as on a cluster.
    """
    if stable is None or stable == new or canary_percent is None or canary_percent >= 100:
        return {str(new): 100}
    return {str(stable): 100 - canary_percent, str(new): canary_percent}
