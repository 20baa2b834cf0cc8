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
        dataset: What the train step read (a built-in name or a file name), recorded as the
            ``train.dataset`` tag.

    Returns:
        The MLMD artifact id.
    """
    from kfp_serve import artifacts
    tag_values = {str(k): str(v) for k, v in parse_json_object(tags, "tags").items()}
    tag_values.update(metric_tags(metrics or {}))
    if dataset:
        tag_values[DATASET_TAG] = dataset
    common: dict[str, Any] = {
        "name": name, "version": version, "author": author or None,
        "description": description or None, "tags": tag_values,
    }
    if kind == MODEL:
        # A train step's directory describes itself (framework, signature): recorded without
        # unpickling the model, so this step never imports scikit-learn or xgboost.
        artifact = artifacts.Model.from_dir(source_dir, **common)
    elif kind == TRANSFORMER:
        artifact = artifacts.Transformer(transformer_dir=str(source_dir), **common)
    else:
        raise InputError(f"kind must be {MODEL!r} or {TRANSFORMER!r}, got {kind!r}")
    # A re-run with identical inputs trains identical bytes: it gets the recorded artifact
    # back. Different content under the same name+version is still refused.
    artifact_id = artifact.submit_artifact(
        allow_existing=True, run=run_name or None, experiment=experiment or None
    )
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
