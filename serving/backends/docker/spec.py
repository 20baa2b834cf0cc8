"""The containers KServe would create for an InferenceService, as engine container specs.

Pure functions of the manifest (read once by :func:`..local.plan.plan_manifest`), the ports
chosen and the model mounts: no engine, so they are tested on plain dicts, stock runtimes
included. What the controller does and this mirrors:

- the predictor's container is the runtime's (:mod:`.runtimes`) with the model spec merged in:
  args appended, env merged by name, resources and securityContext from the model if given;
- the transformer's is the manifest's own, given ``--predictor_host`` and ``--http_port``;
- ``storageUri`` is mounted read-only at ``/mnt/models``;
- ``env[].valueFrom`` and ``envFrom`` read secrets and config maps: here each is a local env
  file, ``$KFP_SERVE_HOME/env/NAME.env`` (``KEY=VALUE`` lines), never logged;
- the isvc's labels go on its containers (MLMD ids included), with the endpoint, revision and
  role.

Containers run on the host network (these machines' engine has no bridge), so each server gets
a free port and binds 127.0.0.1: a runtime's ``--http_port``/``--grpc_port``/``--http_host``
are rewritten.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.home import state_dir
from kfp_serve.serving import constants
from kfp_serve.serving.backends.docker.containers import (
    LABEL_ENDPOINT,
    LABEL_HOME,
    LABEL_REVISION,
    LABEL_ROLE,
    ContainerSpec,
    Mount,
)
from kfp_serve.serving.backends.docker.runtimes import render, runtime_container
from kfp_serve.serving.backends.local.plan import HOST_ENVS, ComponentPlan, Plan
from kfp_serve.serving.backends.local.plan import _flag as flag_value
from kfp_serve.serving.config import merge_env
from kfp_serve.serving.constants import (
    LOOPBACK,
    PREDICTOR,
    STORAGE_URI_ENV,
    TRANSFORMER,
    UNIX_SOCKET_FLAG,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.isvc import DEFAULT_RUNTIMES, MODEL_MOUNT

#: Where envFrom / valueFrom references are read from, under KFP_SERVE_HOME.
ENV_DIR = "env"
#: Flags KServe's servers take for where they listen; rewritten for the host network.
PORT_FLAGS = ("--http_port", "--grpc_port")
HOST_FLAG = "--http_host"


def base_labels(name: str) -> dict[str, str]:
    """The labels every container and volume of endpoint ``name`` carries."""
    return {
        constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
        LABEL_HOME: str(state_dir()),
        LABEL_ENDPOINT: name,
    }


def server_specs(
    plan: Plan,
    number: int,
    ports: dict[str, dict[str, int]],
    models: dict[str, Mount],
    suffix: str,
) -> list[ContainerSpec]:
    """The predictor's (and transformer's) container for revision ``number``.

    Args:
        plan: The planned manifest.
        number: The revision.
        ports: Role -> flag (``--http_port``, ``--grpc_port``) -> the free port it gets.
        models: Role -> what is mounted at /mnt/models.
        suffix: Makes the container names unique (two homes may serve the same name).
    """
    manifest = plan.manifest
    spec = manifest.get("spec") or {}
    isvc_labels = (manifest.get("metadata") or {}).get("labels") or {}
    labels = {
        **{str(k): str(v) for k, v in isvc_labels.items()},
        **base_labels(plan.name),
        LABEL_REVISION: str(number),
    }
    result = [
        _server(
            plan.name, plan.predictor, _predictor_container(plan.name, spec[PREDICTOR]),
            number, ports[PREDICTOR], models[PREDICTOR], labels, suffix,
        )
    ]
    if plan.transformer is not None:
        container = dict((spec[TRANSFORMER].get("containers") or [{}])[0])
        predictor_port = ports[PREDICTOR]["--http_port"]
        container["args"] = [
            *(container.get("args") or []),
            f"--predictor_host={LOOPBACK}:{predictor_port}",
        ]
        result.append(
            _server(
                plan.name, plan.transformer, container, number, ports[TRANSFORMER],
                models[TRANSFORMER], labels, suffix,
            )
        )
    return result


def wanted_ports(container_args: list[str], *, grpc: bool = False) -> list[str]:
    """The port flags a container needs set, each to a free port on the host network: the
    HTTP port, and the gRPC one when its args set one or it serves gRPC (``grpc``; the
    server's default 8081 would collide between containers)."""
    return [
        f
        for f in PORT_FLAGS
        if f == "--http_port"
        or (f == "--grpc_port" and grpc)
        or flag_value(container_args, f) is not None
    ]


def predictor_args(plan: Plan) -> list[str]:
    """The predictor container's args before ports are chosen (to know which it needs)."""
    spec = plan.manifest.get("spec") or {}
    return [str(a) for a in _predictor_container(plan.name, spec[PREDICTOR]).get("args") or []]


def _predictor_container(name: str, predictor: dict[str, Any]) -> dict[str, Any]:
    """The runtime's container with the model spec merged in (a custom container as given)."""
    if predictor.get("containers"):
        return dict(predictor["containers"][0])
    model, framework = _model(predictor)
    runtime = model.get("runtime") or DEFAULT_RUNTIMES.get(framework)
    if not runtime:
        raise ServingError(
            f"InferenceService {name!r}: spec.predictor.model has no runtime and model format "
            f"{framework!r} has no default one: set spec.predictor.model.runtime"
        )
    container = runtime_container(str(runtime))
    container["args"] = [render(str(a), name) for a in container.get("args") or []]
    container["args"] += [str(a) for a in model.get("args") or []]
    container["env"] = merge_env(container.get("env") or [], model.get("env") or [])
    for key in ("resources", "securityContext", "envFrom"):
        if model.get(key):
            container[key] = model[key]
    if model.get("image"):
        container["image"] = model["image"]
    return container


def _model(predictor: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The model spec and its framework, in the current form or the older per-framework one."""
    if isinstance(predictor.get("model"), dict):
        model = predictor["model"]
        return model, str((model.get("modelFormat") or {}).get("name") or "")
    for framework in ("sklearn", "xgboost", "lightgbm"):
        if isinstance(predictor.get(framework), dict):
            return predictor[framework], framework
    return {}, ""


def _server(
    name: str,
    component: ComponentPlan,
    container: dict[str, Any],
    number: int,
    ports: dict[str, int],
    model: Mount,
    labels: dict[str, str],
    suffix: str,
) -> ContainerSpec:
    where = f"InferenceService {name!r} {component.role}"
    container_name = f"kfp-serve-{name}-{number}-{component.role}-{suffix}"
    kfp_serve = _is_kfp_serve(container)
    args = _listen_on(
        [str(a) for a in container.get("args") or []], ports, where, kfp_serve=kfp_serve
    )
    if kfp_serve:
        # The router's way in, as for a process (UNIX_SOCKET_FLAG): containers share the host
        # network namespace here, hence its abstract socket names. Named after the container,
        # which is unique.
        args.append(f"{UNIX_SOCKET_FLAG}=@{container_name}")
    env = {
        **_env_from(container.get("envFrom") or [], where),
        **_container_env(container.get("env") or [], where),
        # The plan's env: the literal env, the data plane settings (batcher, logger, ...).
        **component.server_env,
    }
    for key in HOST_ENVS:
        env.pop(key, None)
    if component.role == TRANSFORMER:
        env[STORAGE_URI_ENV] = component.storage_uri
    context = container.get("securityContext") or {}
    image = container.get("image")
    if not image:
        raise ServingError(f"{where}: the container has no image")
    return ContainerSpec(
        name=container_name,
        image=str(image),
        entrypoint=[str(c) for c in container["command"]] if container.get("command") else None,
        args=args,
        environment=env,
        labels={**labels, LABEL_ROLE: component.role},
        mounts=[model],
        limits=engine_limits(container.get("resources") or {}, where),
        security=engine_security(context),
        non_root=bool(context.get("runAsNonRoot")) and context.get("runAsUser") is None,
    )


def _is_kfp_serve(container: dict[str, Any]) -> bool:
    """A kfp-serve server (it binds 127.0.0.1 unless told otherwise, and takes --http_host)."""
    command = " ".join(str(c) for c in container.get("command") or [])
    return constants.PREDICTOR_MODULE in command or constants.TRANSFORMER_MODULE in command


def _listen_on(args: list[str], ports: dict[str, int], where: str, *, kfp_serve: bool) -> list[str]:
    """``args`` with each port flag set to its chosen port and the host set to 127.0.0.1."""
    out = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in ports or flag == HOST_FLAG:
            # ``--flag value``: drop the value too.
            skip = "=" not in arg and i + 1 < len(args)
            continue
        out.append(arg)
    out += [f"{flag}={port}" for flag, port in ports.items()]
    if kfp_serve or HOST_FLAG in {a.split("=", 1)[0] for a in args}:
        out.append(f"{HOST_FLAG}={LOOPBACK}")
    return out


# --------------------------------------------------------------------------------------------
# Secrets and config maps: local env files


def env_file(name: str) -> Path:
    """The env file that stands in for secret / config map ``name``."""
    return state_dir() / ENV_DIR / f"{name}.env"


def read_env_file(name: str, where: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of :func:`env_file` (``#`` comments and blank lines skipped)."""
    path = env_file(name)
    try:
        text = path.read_text()
    except OSError:
        raise ServingError(
            f"{where}: references secret/config map {name!r}; the Docker backend reads it from "
            f"{str(path)!r} (KEY=VALUE lines): create that file"
        ) from None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ServingError(f"{str(path)!r}: {line.split('=')[0]!r} is not a KEY=VALUE line")
        values[key.strip()] = value
    return values


def _env_from(sources: list[dict[str, Any]], where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in sources:
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        if not ref.get("name"):
            continue
        prefix = str(source.get("prefix") or "")
        try:
            values = read_env_file(str(ref["name"]), f"{where} envFrom")
        except ServingError:
            if ref.get("optional"):
                continue
            raise
        env.update({prefix + k: v for k, v in values.items()})
    return env


def _container_env(env: list[dict[str, Any]], where: str) -> dict[str, str]:
    """Literal values, and valueFrom secretKeyRef / configMapKeyRef read from env files."""
    result = {}
    for var in env:
        key = var.get("name")
        if not key:
            continue
        if var.get("value") is not None:
            result[str(key)] = str(var["value"])
            continue
        source = var.get("valueFrom") or {}
        ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
        if not ref:
            continue  # fieldRef / resourceFieldRef: nothing of a pod to read here
        values = read_env_file(str(ref.get("name")), f"{where} env {key} valueFrom")
        if ref.get("key") not in values:
            if ref.get("optional"):
                continue
            raise ServingError(
                f"{where} env {key}: key {ref.get('key')!r} is not in "
                f"{str(env_file(str(ref.get('name'))))!r}"
            )
        result[str(key)] = values[ref["key"]]
    return result


# --------------------------------------------------------------------------------------------
# Resources and securityContext


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
}


def quantity(value: Any, field: str) -> float:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``1``) as a number."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _UNITS:
        raise ServingError(
            f"{field}: {value!r} is not a Kubernetes quantity (e.g. '500m', '1', '2Gi')"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def engine_limits(resources: dict[str, Any], where: str) -> dict[str, Any]:
    """``resources`` as engine limits: limits.cpu -> CPU quota, limits.memory -> memory limit,
    requests.cpu -> CPU shares, requests.memory -> memory reservation."""
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    out: dict[str, Any] = {}
    if "cpu" in limits:
        out["nano_cpus"] = int(quantity(limits["cpu"], f"{where} resources.limits.cpu") * 1e9)
    if "memory" in limits:
        out["mem_limit"] = int(quantity(limits["memory"], f"{where} resources.limits.memory"))
    if "cpu" in requests:
        cpu = quantity(requests["cpu"], f"{where} resources.requests.cpu")
        out["cpu_shares"] = max(2, math.ceil(cpu * 1024))
    if "memory" in requests:
        memory = int(quantity(requests["memory"], f"{where} resources.requests.memory"))
        out["mem_reservation"] = memory
    return out


def engine_security(context: dict[str, Any]) -> dict[str, Any]:
    """A securityContext as engine options (what the engine can apply of it)."""
    out: dict[str, Any] = {}
    if context.get("runAsUser") is not None:
        group = context.get("runAsGroup")
        out["user"] = f"{context['runAsUser']}" + (f":{group}" if group is not None else "")
    drop = (context.get("capabilities") or {}).get("drop")
    if drop:
        out["cap_drop"] = [str(c) for c in drop]
    add = (context.get("capabilities") or {}).get("add")
    if add:
        out["cap_add"] = [str(c) for c in add]
    if context.get("allowPrivilegeEscalation") is False:
        out["security_opt"] = ["no-new-privileges"]
    if context.get("privileged"):
        out["privileged"] = True
    if context.get("readOnlyRootFilesystem"):
        out["read_only"] = True
    return out


def model_mount(source: str, *, volume: bool) -> Mount:
    """``source`` (a verified host directory or a filled volume) at /mnt/models, read-only."""
    return Mount(source=source, target=MODEL_MOUNT, read_only=True, volume=volume)
