"""Small valid manifests for tests that talk to the API double."""

from __future__ import annotations

from typing import Any


def isvc_manifest(name: str = "iris", storage_uri: str = "gs://kfp-serve-test/iris",
                  **metadata: Any) -> dict[str, Any]:
    """A minimal valid InferenceService: an sklearn predictor with a storageUri.

    Extra keyword arguments go into metadata (``labels=…``, ``annotations=…``, ``namespace=…``).
    """
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, **metadata},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "sklearn"},
                    "runtime": "kserve-sklearnserver",
                    "protocolVersion": "v1",
                    "storageUri": storage_uri,
                }
            }
        },
    }


def multi_isvc_manifest(name: str = "fleet", memory_limit: str | None = "1Gi",
                        **metadata: Any) -> dict[str, Any]:
    """A multi-model parent InferenceService: an sklearn predictor without a storageUri."""
    manifest = isvc_manifest(name, **metadata)
    model = manifest["spec"]["predictor"]["model"]
    del model["storageUri"]
    if memory_limit:
        model["resources"] = {"limits": {"memory": memory_limit}}
    return manifest


def tm_manifest(name: str = "north", parent: str = "fleet", memory: str = "256Mi",
                storage_uri: str | None = None, framework: str = "sklearn",
                **metadata: Any) -> dict[str, Any]:
    """A minimal valid TrainedModel for ``parent``."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": name, **metadata},
        "spec": {
            "inferenceService": parent,
            "model": {
                "storageUri": storage_uri or f"gs://kfp-serve-test/{name}",
                "framework": framework,
                "memory": memory,
            },
        },
    }
