"""Strict validation against KServe's real CRD schemas (``../shared/reference/kserve/crd``).

An API server prunes unknown fields silently (the CRD schemas leave objects open), so a typo in a
manifest would vanish on a real cluster. Like ``kubectl --validate=strict`` we close every object
schema that lists ``properties`` (and does not opt into ``x-kubernetes-preserve-unknown-fields``)
with ``additionalProperties: false`` and validate against every reference version.

Used by the Kubernetes API double (tests/kube_double) and by the builder's and runtimes' tests::

    from tests.kserve_schema import SKIP_REASON, reference_available, validate_strict
    pytestmark = pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)
    assert validate_strict(manifest, "InferenceService") == []
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

REFERENCE_ENV = "KFP_SERVE_REFERENCE"
_REPO = Path(__file__).resolve().parents[1]


def crd_root() -> Path:
    """Directory holding one sub-directory of CRD YAML files per KServe version."""
    base = os.environ.get(REFERENCE_ENV)
    root = Path(base) if base else _REPO.parent / "shared" / "reference"
    return root / "kserve" / "crd"


def reference_available() -> bool:
    """True when the reference CRDs are present (tests that need them skip otherwise)."""
    root = crd_root()
    return root.is_dir() and any(root.glob("*/serving.kserve.io_inferenceservices.yaml"))


SKIP_REASON = (
    f"KServe reference CRDs not found under {crd_root()} "
    f"(set {REFERENCE_ENV} to the directory holding kserve/crd/)"
)


def version_dirs() -> list[Path]:
    """One directory per reference KServe version, sorted by name."""
    root = crd_root()
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _load_yaml_cached(path: Path) -> list[Any]:
    """YAML documents of ``path``; parsed once per file content and cached as JSON.

    The InferenceService CRD is ~2 MB and takes >1 s to parse as YAML, against ~30 ms for JSON;
    every test process (and every API double) needs it.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    cache = Path(tempfile.gettempdir()) / "kfp-serve-crd-cache" / f"{key[:32]}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as f:
        docs = [d for d in yaml.load_all(f, Loader=loader) if d]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(docs))
        os.replace(tmp, cache)  # atomic: concurrent test processes never read half a file
    except OSError:
        pass
    return docs


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with every object that lists ``properties`` closed.

    Objects that set ``x-kubernetes-preserve-unknown-fields`` or already say something about
    ``additionalProperties`` (maps) are left as they are.
    """
    out = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(out)
    return out


@functools.cache
def _crd_versions(version_dir: str, kind: str) -> dict[str, dict[str, Any]]:
    """{api version name: openAPIV3Schema} of the CRD of ``kind`` in ``version_dir``."""
    paths = sorted(Path(version_dir).glob("*.yaml"))
    # The file named after the plural is the likely one: try it first, parse others only if not.
    likely = f"_{kind.lower()}s.yaml"
    paths.sort(key=lambda p: not p.name.endswith(likely))
    for path in paths:
        for doc in _load_yaml_cached(path):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            if doc["spec"]["names"]["kind"] != kind:
                continue
            return {
                v["name"]: v["schema"]["openAPIV3Schema"]
                for v in doc["spec"]["versions"]
                if v.get("served", True)
            }
    return {}


def load_crd_schema(version_dir: str | Path, kind: str, api_version: str = "v1beta1") -> dict:
    """The strict openAPIV3Schema of ``kind`` (e.g. "ClusterServingRuntime") in ``version_dir``."""
    versions = _crd_versions(str(version_dir), kind)
    if api_version not in versions:
        raise LookupError(f"no served {kind}/{api_version} CRD in {version_dir}")
    return _strict_cached(str(version_dir), kind, api_version)


@functools.cache
def _strict_cached(version_dir: str, kind: str, api_version: str) -> dict[str, Any]:
    return strict(_crd_versions(version_dir, kind)[api_version])


def load_isvc_schema(version_dir: str | Path) -> dict[str, Any]:
    """The strict v1beta1 InferenceService schema of one reference version directory."""
    return load_crd_schema(version_dir, "InferenceService")


def crd_schemas(kind: str, api_version: str = "v1beta1") -> dict[str, dict[str, Any]]:
    """{version label (directory name): strict schema} for ``kind`` in every reference version."""
    out = {}
    for d in version_dirs():
        if api_version in _crd_versions(str(d), kind):
            out[d.name] = load_crd_schema(d, kind, api_version)
    return out


@functools.cache
def _validator(version_dir: str, kind: str, api_version: str) -> Any:
    import jsonschema

    schema = load_crd_schema(version_dir, kind, api_version)
    # OpenAPI v3 schemas are close to draft 4/7; "nullable" and x-kubernetes-* are ignored.
    return jsonschema.Draft7Validator(schema)


def validate_strict(obj: dict[str, Any], kind: str | None = None) -> list[str]:
    """Every strict-schema error of ``obj`` against every reference version; [] when valid.

    Args:
        obj: A manifest (camelCase JSON as sent to the API server).
        kind: CRD kind; defaults to ``obj["kind"]``.

    Returns:
        Messages like ``"master-aaac4e2: spec.predictor.sklearn: Additional properties are not
        allowed ('storageUrl' was unexpected)"``, sorted by version then path.
    """
    kind = kind or obj.get("kind")
    if not kind:
        return ["manifest has no kind"]
    api_version = str(obj.get("apiVersion", "")).rpartition("/")[2] or "v1beta1"
    errors = []
    dirs = [d for d in version_dirs() if api_version in _crd_versions(str(d), kind)]
    if not dirs:
        return [f"no reference CRD for {kind}/{api_version} under {crd_root()}"]
    for d in dirs:
        validator = _validator(str(d), kind, api_version)
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            errors.append(f"{d.name}: {where}: {err.message}")
    return errors
