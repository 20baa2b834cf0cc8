"""XGBoost without a transformer, from training to a smoke-tested endpoint.

train → submit model → snapshot → serve → smoke_predict.
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
    smoke_verdict: str


NAME = "xgboost"


def make_pipeline(options: ClusterOptions | None = None):  # noqa: ANN201 - a KFP pipeline
    """Build the pipeline, with Kubernetes additions from ``options`` (none by default)."""
    options = options or ClusterOptions()
    train = get_component("train")
    submit_model = get_component("submit_model")
    snapshot = get_component("snapshot")
    serve = get_component("serve")
    smoke_predict = get_component("smoke_predict")

    @dsl.pipeline(
        name="kfp-serve-xgboost",
        description="Train an XGBoost classifier, record it in ML Metadata, snapshot it, serve "
        "it as a KServe InferenceService and smoke-test the endpoint.",
    )
    def xgboost_pipeline(
        model_name: str = "breast-cancer-xgb",
        model_version: str = "1.0.0",
        endpoint_name: str = "breast-cancer",
        namespace: str = "",
        serve_config: str = "{}",
        dataset_name: str = "breast_cancer",
        hyperparameters: str = "{}",
        author: str = "",
        description: str = "",
        tags: str = "{}",
        experiment: str = "Default",
        snapshot_store: str = "",
        tolerance: float = 1e-5,
        fail_on_mismatch: bool = True,
    ) -> PipelineOutputs:
        trained = train(
            dataset_name=dataset_name, framework="xgboost", estimator="xgb_classifier",
            preprocessing="none", hyperparameters=hyperparameters,
        ).set_display_name("train")
        model = submit_model(
            model=trained.outputs["model"], name=model_name, version=model_version,
            author=author, description=description, tags=tags,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, experiment=experiment,
        ).set_display_name("submit-model")
        model_snapshot = snapshot(
            artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"],
            store=snapshot_store,
        ).set_display_name("snapshot-model")
        served = serve(
            model_id=model.outputs["model_id"], name=endpoint_name, namespace=namespace,
            serve_config=serve_config,
        ).set_display_name("serve").after(model_snapshot)
        smoke = smoke_predict(
            samples=trained.outputs["samples"], endpoint_name=served.outputs["endpoint_name"],
            namespace=namespace, tolerance=tolerance, fail_on_mismatch=fail_on_mismatch,
        ).set_display_name("smoke-predict")
        for task in (model, model_snapshot, served, smoke):
            # These steps change the world (MLMD records, endpoints): never skip one because
            # an identical earlier run was cached.
            task.set_caching_options(False)
        for task in (model_snapshot, served):
            options.apply(task)
        return PipelineOutputs(
            served.outputs["url"], served.outputs["endpoint_name"], model.outputs["model_id"],
            smoke.outputs["verdict"],
        )

    return xgboost_pipeline


pipeline = make_pipeline()
