"""The ``serve`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp.dsl import Artifact, Output

from kfp_serve.components.defs._base import component


@component
def serve(
    manifest: Output[Artifact],
    model_id: int = 0,
    transformer_id: int = 0,
    model: str = "",
    name: str = "",
    namespace: str = "",
    serve_config: str = "{}",
    wait: bool = True,
    timeout: float = 300.0,
) -> NamedTuple("ServeOutputs", [("url", str), ("endpoint_name", str)]):
    """Serve a model (and an optional transformer) as a KServe InferenceService.

    The ServeConfig (resources, env, scaling, tolerations, ... for the predictor and the
    transformer) is merged with Kale's rules into the InferenceService, which is applied and
    waited on until Ready. Without a cluster the same manifest runs as local model servers.

    Args:
        manifest: The applied InferenceService manifest (JSON).
        model_id: MLMD id of the Model artifact (a submit_model output); 0 when model names it.
        transformer_id: MLMD id of the Transformer artifact; 0 serves the model alone.
        model: The model as a reference instead of an id: "iris" (latest servable version),
            "iris:2.0.0" or "iris@champion"; empty when model_id is given.
        name: Endpoint (InferenceService) name; empty for the model's name.
        namespace: Kubernetes namespace; empty for the pipeline's own namespace.
        serve_config: ServeConfig as a JSON object, e.g. {"limits": {"memory": "2Gi"}}.
        wait: Wait until the endpoint is Ready before finishing.
        timeout: Seconds to wait for Ready.

    Returns:
        url: The endpoint's base URL.
        endpoint_name: The InferenceService name.
    """
    import json

    from kfp_serve.components.ops import serve as serve_endpoint

    served = serve_endpoint(
        model_id, transformer_id, model=model, name=name, namespace=namespace,
        serve_config=serve_config, wait=wait, timeout=timeout,
    )
    with open(manifest.path, "w") as f:
        json.dump(served.manifest, f, indent=2, sort_keys=True)
    manifest.metadata.update(endpoint_name=served.name, url=served.url)
    return (served.url, served.name)
