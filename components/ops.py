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

    Returns:
        The MLMD artifact id.
    """
    from kfp_serve import artifacts
    tag_values = {str(k): str(v) for k, v in parse_json_object(tags, "tags").items()}
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
    artifact_id = artifact.submit_artifact(
        run=run_name or None, experiment=experiment or None
    )
    record = artifacts.get_artifact(artifact_id)
    _copy_tree(Path(record.uri), Path(saved_dir))
    return artifact_id


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
    model_id: int,
    transformer_id: int = NO_ID,
    *,
    name: str = "",
    namespace: str = "",
    serve_config: str | dict[str, Any] | None = None,
    wait: bool = True,
    timeout: float = 300.0,
) -> ServedEndpoint:
    """Serve a model (and optional transformer) by MLMD id; returns URL, name and manifest.

    Args:
        model_id: MLMD id of the Model artifact.
        transformer_id: MLMD id of the Transformer artifact, or 0 for none.
        name: Endpoint name; "" for the model's name.
        namespace: Kubernetes namespace; "" for the default.
        serve_config: ServeConfig as a JSON object string or dict ("" for none); parsed by
            ServeConfig.coerce, whose ServeConfigError names the bad field.
        wait: Wait until the endpoint is Ready.
        timeout: Seconds to wait for Ready.
    """
    from kfp_serve.serving.deploy import serve as serve_model

    transformer = _check_id(transformer_id, "transformer_id") if transformer_id > NO_ID else None
    endpoint = serve_model(
        _check_id(model_id, "model_id"), transformer, serve_config=serve_config or None,
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
