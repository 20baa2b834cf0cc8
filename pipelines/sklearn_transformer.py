"""scikit-learn with a preprocessing transformer, from training to a smoke-tested endpoint.

train → submit model + transformer → snapshot both → serve with transformer → smoke_predict.
"""

# No ``from __future__ import annotations``: KFP reads the pipeline's annotations as objects.
from typing import NamedTuple

from kfp import dsl

from kfp_serve.components import get_component
from kfp_serve.pipelines.cluster import ClusterOptions


class PipelineOutputs(NamedTuple):
    """What a run of the pipeline reports."""

    endpoint_url: str
    endpoint_name: str
    model_id: int
    transformer_id: int
    smoke_verdict: str


NAME = "sklearn-transformer"


def make_pipeline(options: ClusterOptions | None = None):  # noqa: ANN201 - a KFP pipeline
    """Build the pipeline, with Kubernetes additions from ``options`` (none by default)."""
    options = options or ClusterOptions()
    train = get_component("train")
    submit_model = get_component("submit_model")
    submit_transformer = get_component("submit_transformer")
    snapshot = get_component("snapshot")
    serve = get_component("serve")
    smoke_predict = get_component("smoke_predict")

    @dsl.pipeline(
        name="kfp-serve-sklearn-transformer",
        description="Train a scikit-learn classifier with a preprocessing transformer, record "
        "both in ML Metadata, snapshot them, serve them as one KServe InferenceService "
        "(transformer in front of the predictor) and smoke-test the endpoint.",
    )
    def sklearn_transformer(
        model_name: str = "iris-classifier",
        model_version: str = "1.0.0",
        transformer_name: str = "iris-scaler",
        transformer_version: str = "1.0.0",
        endpoint_name: str = "iris",
        namespace: str = "",
        serve_config: str = "{}",
        dataset_name: str = "iris",
        estimator: str = "logistic_regression",
        preprocessing: str = "standard_scaler",
        hyperparameters: str = "{}",
        author: str = "",
        description: str = "",
        tags: str = "{}",
        experiment: str = "Default",
        snapshot_store: str = "",
        fail_on_mismatch: bool = True,
    ) -> PipelineOutputs:
        trained = train(
            dataset_name=dataset_name, framework="sklearn", estimator=estimator,
            preprocessing=preprocessing, hyperparameters=hyperparameters,
        ).set_display_name("train")
        model = submit_model(
            model=trained.outputs["model"], name=model_name, version=model_version,
            author=author, description=description, tags=tags,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, experiment=experiment,
        ).set_display_name("submit-model")
        transformer = submit_transformer(
            transformer=trained.outputs["transformer"], name=transformer_name,
            version=transformer_version, author=author, description=description, tags=tags,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, experiment=experiment,
        ).set_display_name("submit-transformer")
        model_snapshot = snapshot(
            artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"],
            store=snapshot_store,
        ).set_display_name("snapshot-model")
        transformer_snapshot = snapshot(
            artifact=transformer.outputs["saved_transformer"],
            artifact_id=transformer.outputs["transformer_id"], store=snapshot_store,
        ).set_display_name("snapshot-transformer")
        served = serve(
            model_id=model.outputs["model_id"],
            transformer_id=transformer.outputs["transformer_id"], name=endpoint_name,
            namespace=namespace, serve_config=serve_config,
        ).set_display_name("serve").after(model_snapshot, transformer_snapshot)
        smoke = smoke_predict(
            samples=trained.outputs["samples"], endpoint_name=served.outputs["endpoint_name"],
            namespace=namespace, fail_on_mismatch=fail_on_mismatch,
        ).set_display_name("smoke-predict")
        for task in (model, transformer, model_snapshot, transformer_snapshot, served, smoke):
            # These steps change the world (MLMD records, endpoints): never skip one because
            # an identical earlier run was cached.
            task.set_caching_options(False)
        for task in (model_snapshot, transformer_snapshot, served):
            options.apply(task)
        return PipelineOutputs(
            served.outputs["url"], served.outputs["endpoint_name"], model.outputs["model_id"],
            transformer.outputs["transformer_id"], smoke.outputs["verdict"],
        )

    return sklearn_transformer


pipeline = make_pipeline()
