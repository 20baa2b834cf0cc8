"""The on-disk layout of a saved model or transformer directory.

A model directory holds exactly one top-level model file that KServe's stock runtimes load
unchanged (sklearnserver: one ``*.joblib``; xgbserver: one ``*.json``/``*.ubj``) plus
``kfp-serve-metadata.yaml``. The metadata file is YAML on purpose: xgbserver refuses a directory
that holds two ``*.json`` files. Both the artifacts layer (writer) and the runtimes (readers)
import the names from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.errors import ArtifactError

MODEL_JOBLIB = "model.joblib"
XGBOOST_JSON = "model.json"
XGBOOST_UBJ = "model.ubj"
TRANSFORMER_JOBLIB = "transformer.joblib"
METADATA_FILE = "kfp-serve-metadata.yaml"
# Aliases under the names serving/runtime/layout.py looks up.
SKLEARN_MODEL_FILE = MODEL_JOBLIB
XGBOOST_MODEL_FILE = XGBOOST_JSON
XGBOOST_UBJ_MODEL_FILE = XGBOOST_UBJ
TRANSFORMER_FILE = TRANSFORMER_JOBLIB

KINDS = ("model", "transformer")
FRAMEWORKS = ("sklearn", "xgboost")
OUTPUT_KINDS = ("label", "value")
# The file names each framework may use for the model itself, in order of preference.
MODEL_FILES: dict[str, tuple[str, ...]] = {
    "sklearn": (MODEL_JOBLIB,),
    "xgboost": (XGBOOST_JSON, XGBOOST_UBJ),
}
LAYOUT_VERSION = 1

_REQUIRED_KEYS = ("kind", "name", "version", "framework", "framework_version", "signature")


def write_metadata(directory: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
    """Validate ``metadata`` and write it as ``kfp-serve-metadata.yaml`` in ``directory``.

    Args:
        directory: An existing artifact directory.
        metadata: The keys described in the module docstring (kind, name, version, framework,
            framework_version, signature).

    Returns:
        The path of the metadata file.

    Raises:
        ArtifactError: ``metadata`` misses a key or holds an unknown kind/framework.
    """
    import yaml  # lazy: keeps ``import kfp_serve.artifacts`` cheap

    _check_metadata(metadata, source="metadata to write")
    path = Path(directory) / METADATA_FILE
    body = {"layout_version": LAYOUT_VERSION, **metadata}
    # sort_keys=False keeps the human-friendly order; the content is deterministic either way,
    # which matters because the file is part of the snapshot digest.
    path.write_text(yaml.safe_dump(body, sort_keys=False, default_flow_style=False))
    return path


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the metadata file of an artifact directory.

    Raises:
        ArtifactError: The file is missing, is not YAML, or lacks required keys.
    """
    import yaml

    path = Path(directory) / METADATA_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(
            f"{str(directory)!r} is not a kfp-serve artifact directory: {METADATA_FILE!r} is "
            "missing (save it with artifacts.Model/Transformer)"
        ) from e
    except yaml.YAMLError as e:
        raise ArtifactError(f"{str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{str(path)!r} must hold a mapping, got {type(data).__name__}")
    _check_metadata(data, source=str(path))
    return data


def model_file(directory: str | os.PathLike[str], framework: str | None = None) -> Path:
    """Return the one model file of a model directory.

    Args:
        directory: A model directory.
        framework: "sklearn" or "xgboost"; read from the metadata file when None.

    Raises:
        ArtifactError: No model file, or more than one, for the framework.
    """
    directory = Path(directory)
    if framework is None:
        framework = read_metadata(directory)["framework"]
    names = MODEL_FILES.get(framework)
    if names is None:
        raise ArtifactError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    found = [directory / n for n in names if (directory / n).is_file()]
    if len(found) != 1:
        raise ArtifactError(
            f"{str(directory)!r} must hold exactly one of {list(names)} for framework "
            f"{framework!r}, found {[p.name for p in found]}"
        )
    return found[0]


def _check_metadata(data: dict[str, Any], source: str) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ArtifactError(f"{source}: missing keys {missing} (required: {list(_REQUIRED_KEYS)})")
    if data["kind"] not in KINDS:
        raise ArtifactError(f"{source}: kind {data['kind']!r} is not one of {KINDS}")
    if data["framework"] not in FRAMEWORKS:
        raise ArtifactError(f"{source}: framework {data['framework']!r} is not one of {FRAMEWORKS}")
    if not isinstance(data["signature"], dict):
        raise ArtifactError(f"{source}: signature must be a mapping")
