"""XGBoost without a transformer, from training to a smoke-tested endpoint.

validate → train → submit model → snapshot → serve → smoke_predict.
"""

# No ``from __future__ import annotations``: KFP reads the pipeline's annotations as objects.
from typing import NamedTuple

from kfp import dsl

from kfp_serve.components import get_component
from kfp_serve.pipelines.checks import DEFAULT_EXPERIMENT, checked_pipeline
from kfp_serve.pipelines.cluster import ClusterOptions


class PipelineOutputs(NamedTuple):
    """What a run of the pipeline reports."""

    endpoint_url: str
    endpoint_name: str
    model_id: int
    smoke_verdict: str


NAME = "xgboost"
PIPELINE_NAME = "kfp-serve-xgboost"
DESCRIPTION = (
    "Train an XGBoost classifier, record it in ML Metadata, snapshot it, serve it as a KServe "
    "InferenceService and smoke-test the endpoint."
)
# Named after the pipeline, so a run never meets the artifacts of the README quick start or of
# the other pipeline.
MODEL_NAME = "xgboost-model"
ENDPOINT_NAME = "xgboost"


def make_pipeline(options: ClusterOptions | None = None):  # noqa: ANN201 - a KFP pipeline
    """Build the pipeline, with Kubernetes additions from ``options`` (none by default)."""
    options = options or ClusterOptions()
    train = get_component("train")
    submit_model = get_component("submit_model")
    snapshot = get_component("snapshot")
    serve = get_component("serve")
    smoke_predict = get_component("smoke_predict")
    validate = get_component("validate")

    def xgboost_pipeline(
        model_name: str = MODEL_NAME,
        model_version: str = "1.0.0",
        endpoint_name: str = ENDPOINT_NAME,
        namespace: str = "",
        serve_config: str = "{}",
        dataset: str = "",
        target_column: str = "target",
        dataset_name: str = "breast_cancer",
        hyperparameters: str = "{}",
        random_state: int = 42,
        author: str = "",
        description: str = "",
        tags: str = "{}",
        experiment: str = DEFAULT_EXPERIMENT,
        snapshot_store: str = "",
        tolerance: float = 1e-5,
        fail_on_mismatch: bool = True,
        new_version: bool = False,
    ) -> PipelineOutputs:
        """Train an XGBoost classifier and serve it.

        Args:
            model_name: Name of the Model artifact (lower-case letters, digits and '-').
            model_version: Version of the Model artifact; a re-run with the same data and
                parameters reuses it, different content needs a new version.
            endpoint_name: Name of the endpoint (InferenceService).
            namespace: Kubernetes namespace to serve in; empty for the pipeline's own.
            serve_config: ServeConfig as a JSON object, e.g. {"limits": {"memory": "2Gi"}}.
            dataset: A CSV or Parquet path or URI (file://, s3://, minio://, gs://, https://)
                to train on, such as a Dataset artifact's URI; empty for dataset_name.
            target_column: The label column of dataset; the other columns are the features.
            dataset_name: Built-in dataset used when dataset is empty: iris, wine,
                breast_cancer or digits.
            hyperparameters: XGBClassifier keyword arguments as a JSON object, e.g.
                {"max_depth": 3}.
            random_state: Seed for the split and the booster: the same seed and data give
                the same model bytes.
            author: Who trained the model, recorded on the artifact.
            description: What the model is for, recorded on the artifact.
            tags: Extra string tags as a JSON object, e.g. {"stage": "dev"}.
            experiment: The ML Metadata experiment the artifact is recorded under.
            snapshot_store: Snapshot store root URI (file://, s3://, pvc://); empty for the
                default.
            tolerance: Largest difference allowed between served and expected probabilities.
            fail_on_mismatch: Fail the run when the endpoint's answers differ from the model's.
            new_version: Compare with the latest recorded version instead of model_version:
                identical content reuses it, different content gets the patch version after it.
        """
        checked = validate(
            model_name=model_name, model_version=model_version, endpoint_name=endpoint_name,
            serve_config=serve_config, snapshot_store=snapshot_store, tags=tags,
        ).set_display_name("validate")
        trained = train(
            dataset_uri=dataset, target_column=target_column, dataset_name=dataset_name,
            framework="xgboost", estimator="xgb_classifier", preprocessing="none",
            hyperparameters=hyperparameters, random_state=random_state,
        ).set_display_name("train").after(checked)
        model = submit_model(
            model=trained.outputs["model"], name=model_name, version=model_version,
            author=author, description=description, tags=tags,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, experiment=experiment,
            metrics=trained.outputs["metrics"], new_version=new_version,
        ).set_display_name("submit-model")
        model_snapshot = snapshot(
            artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"],
            store=snapshot_store,
        ).set_display_name("snapshot-model")
        served = serve(
            model_id=model.outputs["model_id"], name=endpoint_name, namespace=namespace,
            serve_config=checked.outputs["checked_serve_config"],
        ).set_display_name("serve").after(model_snapshot)
        smoke = smoke_predict(
            samples=trained.outputs["samples"], endpoint_name=served.outputs["endpoint_name"],
            namespace=namespace, tolerance=tolerance, fail_on_mismatch=fail_on_mismatch,
        ).set_display_name("smoke-predict")
        for task in (checked, model, model_snapshot, served, smoke):
            # These steps change the world (MLMD records, endpoints): never skip one because
            # an identical earlier run was cached.
            task.set_caching_options(False)
        for task in (model_snapshot, served):
            options.apply(task)
        options.apply_s3(trained)
        return PipelineOutputs(
            served.outputs["url"], served.outputs["endpoint_name"], model.outputs["model_id"],
            smoke.outputs["verdict"],
        )

    return checked_pipeline(xgboost_pipeline, name=PIPELINE_NAME, description=DESCRIPTION)


pipeline = make_pipeline()
