"""The ``validate`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp_serve.components.defs._base import component


@component
def validate(
    model_version: str,
    model_name: str = "",
    transformer_name: str = "",
    transformer_version: str = "1.0.0",
    endpoint_name: str = "",
    serve_config: str = "{}",
    snapshot_store: str = "",
    tags: str = "{}",
    slices: list = [],  # noqa: B006 - KFP needs a literal default; never mutated
) -> NamedTuple("ValidateOutputs", [("checked_serve_config", str)]):
    """Check the run's names, versions, ServeConfig and snapshot store before anything runs.

    The pipeline's first step: a mistake found here stops the run before any artifact is
    recorded in ML Metadata or any endpoint is touched, so the corrected run starts clean.

    Args:
        model_version: Model version, e.g. "1.0.0".
        model_name: Model name (lower-case letters, digits and '-'); empty when slices names
            the models.
        transformer_name: Transformer name; empty when the pipeline has no transformer.
        transformer_version: Transformer version, e.g. "1.0.0".
        endpoint_name: Endpoint (InferenceService) name; empty for the model's name.
        serve_config: ServeConfig as a JSON object, e.g. {"limits": {"memory": "2Gi"}}.
        snapshot_store: Snapshot store root URI (file://, s3://, pvc://); empty for the default.
        tags: Extra string tags as a JSON object, e.g. {"stage": "dev"}.
        slices: A multi-model pipeline's models, each {"model": name, "slice": i, "slices": n}
            (rows dealt into n slices, one model per slice); empty for one model. On a
            cluster the snapshot store must then be one KServe's TrainedModels load from
            (s3://, gs://, https://).

    Returns:
        checked_serve_config: The checked ServeConfig as a JSON object, for the serve step.
    """
    from kfp_serve.components.ops import check_trained_model_store, validate_run

    checked = validate_run(
        names={"model_name": model_name, "transformer_name": transformer_name,
               "endpoint_name": endpoint_name},
        versions={"model_version": model_version,
                  **({"transformer_version": transformer_version} if transformer_name else {})},
        serve_config=serve_config, snapshot_store=snapshot_store, tags=tags, slices=slices,
    )
    if slices:
        check_trained_model_store(snapshot_store)
    return (checked,)
