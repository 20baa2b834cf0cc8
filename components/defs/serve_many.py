"""The ``serve_many`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp.dsl import Artifact, Output

from kfp_serve.components.defs._base import component


@component
def serve_many(
    manifest: Output[Artifact],
    model_ids: list[int],
    name: str,
    namespace: str = "",
    serve_config: str = "{}",
    memory: str = "",
    wait: bool = True,
    timeout: float = 300.0,
) -> NamedTuple("ServeManyOutputs", [("url", str), ("endpoint_name", str),
                                     ("models", list[str])]):
    """Serve several models of one framework behind one multi-model endpoint.

    One model server hosts every model, each at its own /v1/models/NAME and /v2/models/NAME
    routes: on a cluster a parent KServe InferenceService with one TrainedModel per model,
    locally one server process. Each model declares the memory it needs, counted against the
    endpoint's memory limit; a model that does not fit is refused with the numbers and the
    others keep serving. Each model's deployment is recorded in ML Metadata against the
    endpoint.

    Args:
        manifest: The endpoint's manifest and its models (name, version, memory, readiness) as
            JSON.
        model_ids: MLMD ids of the Model artifacts (submit_model outputs), of one framework
            and with distinct names.
        name: Endpoint name.
        namespace: Kubernetes namespace; empty for the pipeline's own namespace.
        serve_config: ServeConfig of the endpoint as a JSON object; its limits.memory is what
            the models' memory is counted against, e.g. {"limits": {"memory": "1Gi"}}.
        memory: Memory each model declares, e.g. "64Mi", or a JSON object of model name to
            memory; empty for the default (64Mi).
        wait: Wait until the endpoint and every model are ready before finishing.
        timeout: Seconds each step (the endpoint, each model) may take to become ready.

    Returns:
        url: The endpoint's base URL.
        endpoint_name: The endpoint name.
        models: The names of the hosted models.
    """
    import json

    from kfp_serve.components.ops import serve_many as serve_models

    served = serve_models(
        model_ids, name=name, namespace=namespace, serve_config=serve_config, memory=memory,
        wait=wait, timeout=timeout,
    )
    with open(manifest.path, "w") as f:
        json.dump(served.manifest, f, indent=2, sort_keys=True)
    manifest.metadata.update(endpoint_name=served.name, url=served.url, models=served.models)
    return (served.url, served.name, served.models)
