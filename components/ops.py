"""The one function each component body calls (plain values and paths in, plain values out).

Component bodies stay a few lines (import, call, write outputs); what they do lives here and in
``artifacts``/``serving``, where it is tested with ``tmp_path`` and no KFP. Nothing here imports
kfp, scikit-learn, xgboost or kserve at module level.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.errors import ArtifactError
from kfp_serve.errors import InputError

MODEL = "model"
TRANSFORMER = "transformer"
#: An artifact id of 0 (or less) means "none" in component parameters: MLMD ids start at 1, and
#: KFP parameters cannot be None.
NO_ID = 0
#: Tags that carry a model's evaluation metrics are named ``metric.<name>``.
METRIC_TAG_PREFIX = "metric."
#: The tag naming the data a model was trained on.
DATASET_TAG = "train.dataset"
#: Metrics not recorded with a model: they differ between otherwise identical runs.
UNRECORDED_METRICS = ("train_seconds",)


@dataclass(frozen=True)
class ServedEndpoint:
    """What the ``serve`` component reports."""

    url: str
    name: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class ServedModels:
    """What the ``serve_many`` component reports: the endpoint and the models it hosts."""

    url: str
    name: str
    models: list[str]
    manifest: dict[str, Any]


@dataclass(frozen=True)
class DataSlice:
    """One model of a multi-model pipeline: its name and the slice of the rows it learns."""

    model: str
    slice: int
    slices: int


def parse_slices(value: str | list[Any] | None) -> list[DataSlice]:
    """The ``slices`` of a multi-model pipeline: ``[{"model": NAME, "slice": I, "slices": N}]``.

    Together they must deal the rows out exactly once (slices 0..N-1 of one N) under distinct
    model names.

    Raises:
        InputError: Not such a list; the message names the entry and what is wrong.
    """
    from kfp_serve.artifacts.names import validate_name

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as e:
            raise InputError(f"slices must be a JSON list, got {value!r}: {e}") from e
    if not isinstance(value, list) or not value:
        raise InputError(
            'slices must be a non-empty list like [{"model": "east", "slice": 0, "slices": 2}, '
            f'{{"model": "west", "slice": 1, "slices": 2}}], got {value!r}'
        )
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"model", "slice", "slices"}:
            raise InputError(
                f"slices[{i}] must have exactly the keys model, slice and slices, got {entry!r}"
            )
        validate_name(entry["model"], f"slices[{i}].model")
        index, count = _check_int(entry["slice"]), _check_int(entry["slices"])
        if index is None or count is None or count < 1 or not 0 <= index < count:
            raise InputError(
                f"slices[{i}]: slice must be a whole number from 0 to slices - 1, got slice="
                f"{entry['slice']!r}, slices={entry['slices']!r}"
            )
        out.append(DataSlice(entry["model"], index, count))
    names = [s.model for s in out]
    if len(set(names)) != len(names):
        raise InputError(f"slices: each model needs its own name, got {names}")
    counts = {s.slices for s in out}
    if len(counts) != 1 or sorted(s.slice for s in out) != list(range(out[0].slices)):
        raise InputError(
            "slices: the entries must cover slice 0 to slices - 1 once each, with one value of "
            f"slices for all, got {[(s.slice, s.slices) for s in out]}"
        )
    return out


def check_trained_model_store(snapshot_store: str) -> None:
    """On a cluster, hosted models are KServe TrainedModels, which load from s3://, gs:// or
    http(s):// only: refuse another snapshot store before any model is trained and recorded.

    Run by the validate step of a multi-model pipeline (where it runs decides the backend),
    not when a pipeline is defined: compiling must not depend on the compiling machine.

    Raises:
        ServeConfigError: Serving on Kubernetes from a store TrainedModels cannot load.
    """
    from kfp_serve.artifacts.snapshots import STORE_ENV, default_root
    from kfp_serve.serving.admission import TM_STORAGE_PREFIXES
    from kfp_serve.serving.backends.base import KUBERNETES, default_backend_name
    from kfp_serve.serving.errors import ServeConfigError

    if default_backend_name() != KUBERNETES:
        return  # a local endpoint loads file:// snapshots too
    root = snapshot_store or default_root()
    if not root.startswith(TM_STORAGE_PREFIXES):
        raise ServeConfigError(
            f"snapshot_store: {root!r} cannot feed a multi-model endpoint on a cluster: KServe "
            f"loads TrainedModels from {', '.join(TM_STORAGE_PREFIXES)} only; pass "
            f"snapshot_store=s3://bucket/prefix (or set {STORE_ENV})"
        )


def _check_int(value: Any) -> int | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a JSON number KFP handed over as a float
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_json_object(text: str | dict[str, Any] | None, what: str) -> dict[str, Any]:
    """A JSON object parameter ("" or None meaning empty), with an error that names it.

    Not for ``serve_config``: ServeConfig.coerce parses that one, with ServeConfigError.

    Raises:
        InputError: ``text`` is not a JSON object.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} must be a JSON object, e.g. '{{\"a\": \"b\"}}'; got {text!r}: "
                         f"{e}") from e
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object, got {text!r}")
    return value


def submit(
    kind: str,
    source_dir: str | os.PathLike[str],
    saved_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    author: str = "",
    description: str = "",
    tags: str | dict[str, Any] | None = None,
    run_name: str = "",
    experiment: str = "",
    metrics: dict[str, Any] | None = None,
    dataset: str = "",
    new_version: bool = False,
) -> int:
    """Record a trained model or transformer in MLMD and copy the saved artifact to ``saved_dir``.

    The copy is what later steps snapshot: on a cluster each step runs in its own pod, so the
    directory ``artifacts`` saved into is gone once this step ends, while ``saved_dir`` (a KFP
    output artifact) is carried to the next step.

    Args:
        kind: "model" or "transformer".
        source_dir: The directory a ``train`` step wrote.
        saved_dir: Where to copy the saved artifact directory (layout + metadata file).
        name: Artifact name (DNS-1123).
        version: Artifact version.
        author: Who made it.
        description: Free text.
        tags: A JSON object (or dict) of string tags.
        run_name: The pipeline run, recorded as the artifact's run context.
        experiment: The experiment, recorded as the artifact's experiment context.
        metrics: Evaluation metrics of the train step, recorded as ``metric.<name>`` tags
            (timings are left out: they differ between identical runs).
        dataset: What the train step read (a built-in name, a file name or a URI), recorded as the
            ``train.dataset`` tag.
        new_version: Compare with the latest recorded version of ``name`` instead: identical
            content reuses it, different content is recorded under the patch version after
            it (``version`` is used when nothing is recorded yet).

    Returns:
        The MLMD artifact id.

    Raises:
        VersionConflictError: name+version holds different content (and not ``new_version``).
    """
    from kfp_serve import artifacts
    tag_values = {str(k): str(v) for k, v in parse_json_object(tags, "tags").items()}
    tag_values.update(metric_tags(metrics or {}))
    if dataset:
        tag_values[DATASET_TAG] = dataset
    if kind not in (MODEL, TRANSFORMER):
        raise InputError(f"kind must be {MODEL!r} or {TRANSFORMER!r}, got {kind!r}")

    def record_as(version: str) -> int:
        common: dict[str, Any] = {
            "name": name, "version": version, "author": author or None,
            "description": description or None, "tags": tag_values,
        }
        if kind == MODEL:
            # A train step's directory describes itself (framework, signature): recorded
            # without unpickling the model, so this step never imports sklearn or xgboost.
            artifact: Any = artifacts.Model.from_dir(source_dir, **common)
        else:
            artifact = artifacts.Transformer(transformer_dir=str(source_dir), **common)
        # A re-run with identical inputs trains identical bytes: it gets the recorded
        # artifact back. Different content under the same name+version is refused.
        return artifact.submit_artifact(
            allow_existing=True, run=run_name or None, experiment=experiment or None
        )

    if new_version:
        from kfp_serve.artifacts.errors import VersionConflictError
        from kfp_serve.artifacts.names import next_patch
        from kfp_serve.artifacts.records import find_artifact

        latest = find_artifact(name, kind=kind, missing_ok=True)
        version = latest.version if latest is not None else version
        try:
            artifact_id = record_as(version)
        except VersionConflictError:
            artifact_id = record_as(next_patch(version))
    else:
        artifact_id = record_as(version)
    record = artifacts.get_artifact(artifact_id)
    _copy_tree(Path(record.uri), Path(saved_dir))
    return artifact_id


def metric_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """``{"accuracy": 0.9}`` -> ``{"metric.accuracy": "0.9"}``, without timings."""
    return {
        f"{METRIC_TAG_PREFIX}{k}": str(v) for k, v in metrics.items()
        if k not in UNRECORDED_METRICS and isinstance(v, int | float)
    }


def recorded_metrics(tags: dict[str, str]) -> dict[str, str]:
    """The metrics :func:`metric_tags` recorded, by name."""
    return {
        k[len(METRIC_TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)
    }


def validate_run(
    *,
    names: dict[str, str],
    versions: dict[str, str],
    serve_config: str | dict[str, Any] | None = None,
    snapshot_store: str = "",
    tags: str | dict[str, Any] | None = None,
    slices: str | list[Any] | None = None,
) -> str:
    """Check a pipeline run's inputs before any step records or serves anything.

    A typo found at the ``serve`` step would come after the model versions were recorded, so
    the fixed re-run would meet them; this runs first instead, and needs no MLMD, cluster or
    snapshot store to be reachable.

    Args:
        names: Parameter name -> artifact or endpoint name ("" means "use the default").
        versions: Parameter name -> version.
        serve_config: The ServeConfig as a JSON object string or dict.
        snapshot_store: Snapshot store root URI; "" for the default.
        tags: Tags as a JSON object string or dict.
        slices: A multi-model pipeline's models and data slices (see :func:`parse_slices`);
            None or [] for a single-model pipeline.

    Returns:
        The ServeConfig as given, as a JSON object string.

    Raises:
        InvalidNameError: A bad name or version (the message names the parameter).
        ServeConfigError: A ServeConfig that does not validate.
        SnapshotError: A snapshot store URI of an unknown scheme.
        ValueError: ``serve_config`` or ``tags`` is not a JSON object.
    """
    from kfp_serve.artifacts.names import validate_name, validate_version
    from kfp_serve.artifacts.snapshots.base import backend_class
    from kfp_serve.serving.config import ServeConfig

    for param, value in names.items():
        if value:
            validate_name(value, param)
    for param, value in versions.items():
        validate_version(value, param)
    config = parse_json_object(serve_config, "serve_config")
    ServeConfig.coerce(config)
    parse_json_object(tags, "tags")
    if slices:
        parse_slices(slices)
    if snapshot_store:
        scheme, sep, _ = snapshot_store.partition("://")
        if sep:
            backend_class(scheme)
    return json.dumps(config, sort_keys=True)


def snapshot(
    artifact_id: int, path: str | os.PathLike[str], store: str = ""
) -> Any:
    """Snapshot an artifact directory and link the snapshot to MLMD artifact ``artifact_id``.

    Args:
        artifact_id: The MLMD id of the artifact the directory holds.
        path: The artifact directory (the ``saved`` output of a submit step).
        store: Snapshot store root URI (file://, s3://, pvc://); "" for the default
            (``KFP_SERVE_SNAPSHOT_STORE``, else under ``KFP_SERVE_HOME``).

    Returns:
        The ``kfp_serve.artifacts.Snapshot`` (uri, digest, size).
    """
    from kfp_serve import artifacts
    artifact_id = _check_id(artifact_id, "artifact_id")
    taken = artifacts.SnapshotStore(store or None).snapshot(Path(path))
    artifacts.link_snapshot(artifact_id, taken)
    return taken


def serve(
    model_id: int = NO_ID,
    transformer_id: int = NO_ID,
    *,
    model: str = "",
    name: str = "",
    namespace: str = "",
    serve_config: str | dict[str, Any] | None = None,
    wait: bool = True,
    timeout: float = 300.0,
) -> ServedEndpoint:
    """Serve a model (and optional transformer) by MLMD id or reference; returns URL, name and
    manifest.

    Args:
        model_id: MLMD id of the Model artifact, or 0 when ``model`` names it.
        transformer_id: MLMD id of the Transformer artifact, or 0 for none.
        model: A model reference instead of ``model_id``: ``"iris"`` (latest servable
            version), ``"iris:2.0.0"`` or ``"iris@champion"``.
        name: Endpoint name; "" for the model's name.
        namespace: Kubernetes namespace; "" for the default.
        serve_config: ServeConfig as a JSON object string or dict ("" for none); parsed by
            ServeConfig.coerce, whose ServeConfigError names the bad field.
        wait: Wait until the endpoint is Ready.
        timeout: Seconds to wait for Ready.
    """
    from kfp_serve.serving.deploy import serve as serve_model

    transformer = _check_id(transformer_id, "transformer_id") if transformer_id > NO_ID else None
    if bool(model) == (model_id != NO_ID):
        raise InputError(
            f"give the model as model_id (an MLMD id) or as model (a reference such as "
            f"'iris@champion'), exactly one of them; got model_id={model_id!r}, model={model!r}"
        )
    endpoint = serve_model(
        model or _check_id(model_id, "model_id"), transformer, serve_config=serve_config or None,
        name=name or None, namespace=namespace or None, wait=wait, timeout=timeout,
    )
    status = endpoint.status
    return ServedEndpoint(url=str(status.url or ""), name=endpoint.name, manifest=status.manifest)


def serve_many(
    model_ids: list[Any],
    *,
    name: str,
    namespace: str = "",
    serve_config: str | dict[str, Any] | None = None,
    memory: str = "",
    wait: bool = True,
    timeout: float = 300.0,
) -> ServedModels:
    """Serve models by MLMD id behind one multi-model endpoint; URL, name, models, manifests.

    Args:
        model_ids: MLMD ids of the Model artifacts (one framework; distinct names).
        name: The endpoint name.
        namespace: Kubernetes namespace; "" for the default.
        serve_config: The endpoint's ServeConfig (its limits.memory is the server's limit).
        memory: Memory each model declares: one quantity ("64Mi"), a JSON object of model name
            to quantity, or "" for the default.
        wait: Wait until the endpoint and every model are ready.
        timeout: Seconds each step may take.
    """
    from kfp_serve.serving.multi import hosted_models
    from kfp_serve.serving.multi import serve_many as serve_models

    ids = [_check_id(v, f"model_ids[{i}]") for i, v in enumerate(model_ids or [])]
    if not ids:
        raise InputError("model_ids must list at least one MLMD model id")
    per_model: str | dict[str, Any] | None = None
    if memory.strip().startswith("{"):
        per_model = {str(k): str(v) for k, v in parse_json_object(memory, "memory").items()}
    elif memory.strip():
        per_model = memory.strip()
    endpoint = serve_models(
        name, ids, serve_config or None, memory=per_model, namespace=namespace or None,
        wait=wait, timeout=timeout,
    )
    status = endpoint.status
    models = hosted_models(endpoint)
    manifest = {
        "endpoint": status.manifest,
        "models": [
            {"name": m.name, "version": m.version, "memory": m.memory, "ready": m.ready,
             "storage_uri": m.storage_uri, "url": m.url, "reason": m.reason}
            for m in models
        ],
    }
    return ServedModels(url=str(status.url or ""), name=endpoint.name,
                        models=[m.name for m in models], manifest=manifest)


def smoke_many(
    endpoint_name: str,
    model_ids: list[Any],
    samples_paths: list[str],
    *,
    namespace: str = "",
    tolerance: float = 1e-6,
    deadline: float = 120.0,
) -> list[tuple[str, Any]]:
    """Smoke-test each hosted model of a multi-model endpoint with its own held-out samples.

    ``model_ids[i]`` was trained with ``samples_paths[i]`` (the same loop iteration); each is
    asked at its own name on the endpoint.

    Returns:
        (model name, ``SmokeResult``) per model, in the order given.
    """
    from kfp_serve import artifacts
    from kfp_serve.serving.smoke import smoke_endpoint

    if len(model_ids) != len(samples_paths):
        raise InputError(
            f"model_ids and samples must pair up: got {len(model_ids)} ids and "
            f"{len(samples_paths)} samples files"
        )
    results = []
    for i, (model_id, path) in enumerate(zip(model_ids, samples_paths, strict=True)):
        record = artifacts.get_artifact(_check_id(model_id, f"model_ids[{i}]"))
        results.append((record.name, smoke_endpoint(
            endpoint_name, path, namespace=namespace or None, tolerance=tolerance,
            deadline_s=deadline, model=record.name,
        )))
    return results


def _check_id(value: Any, what: str) -> int:
    # kfp.local hands integers stored in artifact metadata back as floats (1.0).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= NO_ID:
        raise InputError(f"{what} must be a positive MLMD id, got {value!r}")
    return value


def _copy_tree(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise ArtifactError(f"saved artifact directory {str(src)!r} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, dirs_exist_ok=True)


def rollout(
    model: int | str,
    endpoint_name: str,
    gate: Any,
    *,
    dataset_path: str = "",
    dataset_name: str = "iris",
    target_column: str = "target",
    test_size: float = 0.2,
    random_state: int = 42,
    champion: str = "",
    serve_config: str | dict[str, Any] | None = None,
    namespace: str = "",
    replay: bool = False,
    timeout: float = 300.0,
) -> Any:
    """Gated rollout of ``model`` on ``endpoint_name`` (see
    ``kfp_serve.serving.gated_rollout``), held out as the train step held out.

    Args:
        model: The candidate: an MLMD id or a reference ("iris:2.0.0").
        endpoint_name: The endpoint to roll it out on.
        gate: The gate as YAML/JSON text or a file path (offline thresholds, canary, live
            window, alias), or a ``GatePolicy``.
        dataset_path, dataset_name, target_column, test_size, random_state: The train step's
            data arguments: the offline gate evaluates on the same held-out rows.
        champion: A model reference to compare with; "" for the alias, else what serves.
        serve_config: The candidate's ServeConfig (JSON object string or dict).
        namespace: Kubernetes namespace; "" for the default.
        replay: Send the held-out rows to the endpoint during the live window (a run without
            clients); False waits for real traffic.
        timeout: Seconds the candidate gets to become Ready.

    Returns:
        The ``RolloutReport``.
    """
    from kfp_serve.artifacts.training import split_dataset
    from kfp_serve.serving.gated_rollout import GatePolicy, gated_rollout, load_gate

    policy = gate if isinstance(gate, GatePolicy) else load_gate(gate)  # before the data is read
    split = split_dataset(dataset_path or None, dataset_name, target_column, test_size,
                          random_state)
    candidate = model if isinstance(model, str) else _check_id(model, "model_id")
    return gated_rollout(
        endpoint_name, candidate, policy, split.x_test, split.y_test,
        champion=champion or None, serve_config=parse_json_object(serve_config, "serve_config"),
        namespace=namespace or None, timeout=timeout,
        replay=split.x_test.tolist() if replay else None,
    )
