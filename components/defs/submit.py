"""The ``submit_model`` and ``submit_transformer`` components."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple, Optional

from kfp.dsl import Artifact, Input, Metrics, Model, Output

from kfp_serve.components.defs._base import component


@component
def submit_model(
    model: Input[Model],
    saved_model: Output[Model],
    name: str,
    version: str = "1.0.0",
    author: str = "",
    description: str = "",
    tags: str = "{}",
    run_name: str = "",
    experiment: str = "default",
    metrics: Optional[Input[Metrics]] = None,  # noqa: UP045 - KFP reads Optional, not X | None
    new_version: bool = False,
) -> NamedTuple("SubmitModelOutputs", [("model_id", int)]):
    """Record a trained model in ML Metadata as a kfp-serve Model artifact.

    The model is saved in the layout KServe's stock runtimes load, with its signature (number
    of features, classes, output kind) in kfp-serve-metadata.yaml, and linked to the pipeline
    run and experiment contexts so its lineage can be traced.

    Args:
        model: The model directory a train step wrote.
        saved_model: The saved artifact directory, for the snapshot step.
        name: Model name (lower-case letters, digits and '-'), e.g. "iris-classifier".
        version: Model version, e.g. "1.0.0".
        author: Who trained the model.
        description: What the model is for.
        tags: Extra string tags as a JSON object, e.g. {"stage": "dev"}.
        run_name: The pipeline run to link the artifact to (the pipeline fills it in).
        experiment: The experiment to link the artifact to.
        metrics: The train step's metrics, recorded with the model (accuracy, F1).
        new_version: Compare with the latest recorded version instead of version: identical
            content reuses it, different content gets the patch version after it.

    Returns:
        model_id: The MLMD id of the Model artifact.
    """
    from kfp_serve.components.ops import submit

    model_id = submit(
        "model", model.path, saved_model.path, name=name, version=version, author=author,
        description=description, tags=tags, run_name=run_name, experiment=experiment,
        metrics=dict(metrics.metadata) if metrics is not None else None,
        dataset=str(model.metadata.get("dataset", "")), new_version=new_version,
    )
    saved_model.metadata["mlmd_id"] = model_id
    return (model_id,)


@component
def submit_transformer(
    transformer: Input[Artifact],
    saved_transformer: Output[Artifact],
    name: str,
    version: str = "1.0.0",
    author: str = "",
    description: str = "",
    tags: str = "{}",
    run_name: str = "",
    experiment: str = "default",
    new_version: bool = False,
) -> NamedTuple("SubmitTransformerOutputs", [("transformer_id", int)]):
    """Record a fitted preprocessing transformer in ML Metadata as a kfp-serve Transformer.

    The transformer is served in front of the model (a KServe transformer), turning raw
    requests into the features the model was trained on.

    Args:
        transformer: The transformer directory a train step wrote.
        saved_transformer: The saved artifact directory, for the snapshot step.
        name: Transformer name (lower-case letters, digits and '-'), e.g. "iris-scaler".
        version: Transformer version, e.g. "1.0.0".
        author: Who made the transformer.
        description: What the transformer does.
        tags: Extra string tags as a JSON object, e.g. {"stage": "dev"}.
        run_name: The pipeline run to link the artifact to (the pipeline fills it in).
        experiment: The experiment to link the artifact to.
        new_version: Compare with the latest recorded version instead of version: identical
            content reuses it, different content gets the patch version after it.

    Returns:
        transformer_id: The MLMD id of the Transformer artifact.
    """
    from kfp_serve.components.ops import submit

    transformer_id = submit(
        "transformer", transformer.path, saved_transformer.path, name=name, version=version,
        author=author, description=description, tags=tags, run_name=run_name,
        experiment=experiment, new_version=new_version,
    )
    saved_transformer.metadata["mlmd_id"] = transformer_id
    return (transformer_id,)
