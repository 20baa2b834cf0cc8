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
