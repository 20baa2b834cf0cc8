"""Many small scikit-learn models behind one endpoint, one per slice of one dataset.

validate → for each slice (in parallel): train → submit model → snapshot → then serve_many
(one multi-model endpoint hosting them all) → smoke_predict_many (each model with its own
held-out requests).
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
    models: list[str]
    smoke_verdict: str


NAME = "sklearn-multi"
PIPELINE_NAME = "kfp-serve-sklearn-multi"
DESCRIPTION = (
    "Train one scikit-learn classifier per slice of a dataset, record each in ML Metadata, "
    "snapshot them, serve them all behind one multi-model endpoint and smoke-test each model."
)
ENDPOINT_NAME = "sklearn-multi"
#: The models: three slices of the rows, dealt round robin (names are the pipeline's own, so a
#: run never meets the artifacts of the other pipelines).
SLICES = [
    {"model": f"{ENDPOINT_NAME}-{part}", "slice": i, "slices": 3}
    for i, part in enumerate(("a", "b", "c"))
]
#: The endpoint's memory limit: room for the three models' declared memory, and more.
SERVE_CONFIG = '{"limits": {"memory": "1Gi"}}'


def make_pipeline(options: ClusterOptions | None = None):  # noqa: ANN201 - a KFP pipeline
    """Build the pipeline, with Kubernetes additions from ``options`` (none by default)."""
    options = options or ClusterOptions()
    validate = get_component("validate")
    train = get_component("train")
    submit_model = get_component("submit_model")
    snapshot = get_component("snapshot")
    serve_many = get_component("serve_many")
    smoke_predict_many = get_component("smoke_predict_many")

    def sklearn_multi_pipeline(
        slices: list = SLICES,  # noqa: B006 - KFP needs a literal default; never mutated
        model_version: str = "1.0.0",
        endpoint_name: str = ENDPOINT_NAME,
        namespace: str = "",
        serve_config: str = SERVE_CONFIG,
        memory: str = "64Mi",
        dataset: str = "",
        target_column: str = "target",
        dataset_name: str = "iris",
        estimator: str = "logistic_regression",
        hyperparameters: str = "{}",
        random_state: int = 42,
        author: str = "",
        description: str = "",
        tags: str = "{}",
        experiment: str = DEFAULT_EXPERIMENT,
        snapshot_store: str = "",
        fail_on_mismatch: bool = True,
        new_version: bool = False,
    ) -> PipelineOutputs:
        """Train one scikit-learn classifier per data slice and serve them behind one endpoint.

        Args:
            slices: The models to train, each {"model": name, "slice": i, "slices": n}: the
                rows are dealt round robin into n slices and the model learns slice i.
            model_version: Version of every Model artifact; a re-run with the same data and
                parameters reuses them, different content needs a new version.
            endpoint_name: Name of the multi-model endpoint.
            namespace: Kubernetes namespace to serve in; empty for the pipeline's own.
            serve_config: ServeConfig of the endpoint as a JSON object; its limits.memory is
                what the models' declared memory is counted against.
            memory: Memory each model declares, e.g. "64Mi", or a JSON object of model name to
                memory.
            dataset: A CSV or Parquet path or URI (file://, s3://, https://) to train on;
                empty to use the built-in dataset_name.
            target_column: The label column of dataset; the other columns are the features.
            dataset_name: Built-in dataset used when dataset is empty: iris, wine,
                breast_cancer or digits.
            estimator: "logistic_regression" or "random_forest".
            hyperparameters: Estimator keyword arguments as a JSON object, e.g. {"C": 0.5}.
            random_state: Seed for the splits and the estimators: the same seed and data give
                the same model bytes.
            author: Who trained the models, recorded on the artifacts.
            description: What the models are for, recorded on the artifacts.
            tags: Extra string tags as a JSON object, e.g. {"stage": "dev"}.
            experiment: The ML Metadata experiment the artifacts are recorded under.
            snapshot_store: Snapshot store root URI (file://, s3://; a cluster's TrainedModels
                need s3://); empty for the default.
            fail_on_mismatch: Fail the run when a model's answers differ from its training.
            new_version: Compare each model with its latest recorded version instead of
                model_version: identical content reuses it, different content gets the patch
                version after it.
        """
        checked = validate(
            model_version=model_version, endpoint_name=endpoint_name,
            serve_config=serve_config, snapshot_store=snapshot_store, tags=tags, slices=slices,
        ).set_display_name("validate")
        with dsl.ParallelFor(slices) as part:
            trained = train(
                dataset_uri=dataset, target_column=target_column, dataset_name=dataset_name,
                framework="sklearn", estimator=estimator, preprocessing="none",
                hyperparameters=hyperparameters, random_state=random_state,
                data_slice=part.slice, data_slices=part.slices,
            ).set_display_name("train").after(checked)
            model = submit_model(
                model=trained.outputs["model"], name=part.model, version=model_version,
                author=author, description=description, tags=tags,
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, experiment=experiment,
                metrics=trained.outputs["metrics"], new_version=new_version,
            ).set_display_name("submit-model")
            model_snapshot = snapshot(
                artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"],
                store=snapshot_store,
            ).set_display_name("snapshot-model")
        served = serve_many(
            model_ids=dsl.Collected(model.outputs["model_id"]), name=endpoint_name,
            namespace=namespace, serve_config=checked.outputs["checked_serve_config"],
            memory=memory,
        ).set_display_name("serve-many").after(model_snapshot)
        smoke = smoke_predict_many(
            samples=dsl.Collected(trained.outputs["samples"]),
            model_ids=dsl.Collected(model.outputs["model_id"]),
            endpoint_name=served.outputs["endpoint_name"], namespace=namespace,
            fail_on_mismatch=fail_on_mismatch,
        ).set_display_name("smoke-predict-many")
        for task in (checked, model, model_snapshot, served, smoke):
            # These steps change the world (MLMD records, endpoints): never skip one because
            # an identical earlier run was cached.
            task.set_caching_options(False)
        for task in (model_snapshot, served):
            options.apply(task)
        return PipelineOutputs(
            served.outputs["url"], served.outputs["endpoint_name"], served.outputs["models"],
            smoke.outputs["verdict"],
        )

    return checked_pipeline(sklearn_multi_pipeline, name=PIPELINE_NAME, description=DESCRIPTION)


pipeline = make_pipeline()
