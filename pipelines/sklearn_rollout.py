"""A scikit-learn model taken to production only if it earns it: a gated rollout.

validate → train → submit model → snapshot → rollout. The first run serves the model (nothing
to compare with yet) and points the alias at it; each later run with a new ``model_version``
is a candidate: offline gate against the alias's champion on the same held-out rows, a canary
with the stable revision's requests mirrored to it, then promote (alias moved) or roll back.
"""

# No ``from __future__ import annotations``: KFP reads the pipeline's annotations as objects.
from typing import NamedTuple

from kfp import dsl

from kfp_serve.components import get_component
from kfp_serve.pipelines.checks import DEFAULT_EXPERIMENT, checked_pipeline
from kfp_serve.pipelines.cluster import ClusterOptions


class PipelineOutputs(NamedTuple):
    """What a run of the pipeline reports."""

    model_id: int
    decision: str
    promoted: bool


NAME = "sklearn-rollout"
PIPELINE_NAME = "kfp-serve-sklearn-rollout"
DESCRIPTION = (
    "Train a scikit-learn classifier, record it in ML Metadata, snapshot it and roll it out "
    "behind a gate: held-out metrics against the champion, a canary with mirrored traffic, "
    "then promote (moving the alias) or roll back, with a verdict report."
)
MODEL_NAME = "sklearn-rollout-model"
#: The gate unless a run names another: at least 0.8 accuracy and not a point worse than the
#: champion; then a 20 % canary over 500 requests whose answers agree with the stable ones on
#: nine in ten mirrored requests, at most 1 % errors and a p99 latency at most twice the stable
#: revision's (p99 over a short window on a busy laptop is noisy; tighten it for production).
DEFAULT_GATE = (
    '{"offline": {"accuracy": {"min": 0.8, "max_change": 0.01}}, "canary": 20, '
    '"live": {"window_requests": 500, "window_seconds": 300, "max_error_rate": 0.01, '
    '"max_p99_ratio": 2.0, "min_agreement": 0.9}}'
)
ENDPOINT_NAME = "sklearn-rollout"


def make_pipeline(options: ClusterOptions | None = None):  # noqa: ANN201 - a KFP pipeline
    """Build the pipeline, with Kubernetes additions from ``options`` (none by default)."""
    options = options or ClusterOptions()
    validate = get_component("validate")
    train = get_component("train")
    submit_model = get_component("submit_model")
    snapshot = get_component("snapshot")
    rollout = get_component("rollout")

    def sklearn_rollout(
        model_name: str = MODEL_NAME,
        model_version: str = "1.0.0",
        endpoint_name: str = ENDPOINT_NAME,
        namespace: str = "",
        serve_config: str = "{}",
        gate: str = DEFAULT_GATE,
        replay: bool = True,
        dataset: str = "",
        target_column: str = "target",
        dataset_name: str = "iris",
        estimator: str = "logistic_regression",
        hyperparameters: str = "{}",
        test_size: float = 0.2,
        random_state: int = 42,
        author: str = "",
        description: str = "",
        tags: str = "{}",
        experiment: str = DEFAULT_EXPERIMENT,
        snapshot_store: str = "",
    ) -> PipelineOutputs:
        """Train a scikit-learn classifier and roll it out behind a gate.

        Args:
            model_name: Name of the Model artifact (lower-case letters, digits and '-').
            model_version: Version of the Model artifact; each candidate needs a new one.
            endpoint_name: Name of the endpoint (InferenceService) to roll out on.
            namespace: Kubernetes namespace to serve in; empty for the pipeline's own.
            serve_config: ServeConfig as a JSON object, e.g. {"limits": {"memory": "2Gi"}}.
            gate: The gate as JSON or YAML: offline thresholds per metric (min, max,
                max_change), canary percent, live window and limits, alias.
            replay: Send the held-out rows to the endpoint during the live window (for a run
                with no clients); false waits for real traffic.
            dataset: A CSV or Parquet path or URI to train on; empty to use dataset_name.
            target_column: The label column of dataset; the other columns are the features.
            dataset_name: Built-in dataset used when dataset is empty: iris, wine,
                breast_cancer or digits.
            estimator: "logistic_regression" or "random_forest".
            hyperparameters: Estimator keyword arguments as a JSON object, e.g. {"C": 0.5}.
            test_size: Fraction of rows held out: the train step's metrics and the gate's.
            random_state: Seed for the split and the estimator.
            author: Who trained the model, recorded on the artifact.
            description: What the model is for, recorded on the artifact.
            tags: Extra string tags as a JSON object, e.g. {"stage": "dev"}.
            experiment: The ML Metadata experiment the artifact is recorded under.
            snapshot_store: Snapshot store root URI (file://, s3://, pvc://); empty for the
                default.
        """
        checked = validate(
            model_name=model_name, model_version=model_version, endpoint_name=endpoint_name,
            serve_config=serve_config, snapshot_store=snapshot_store, tags=tags,
        ).set_display_name("validate")
        trained = train(
            dataset_uri=dataset, target_column=target_column, dataset_name=dataset_name,
            framework="sklearn", estimator=estimator, preprocessing="none",
            hyperparameters=hyperparameters, test_size=test_size, random_state=random_state,
        ).set_display_name("train").after(checked)
        model = submit_model(
            model=trained.outputs["model"], name=model_name, version=model_version,
            author=author, description=description, tags=tags,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, experiment=experiment,
            metrics=trained.outputs["metrics"],
        ).set_display_name("submit-model")
        model_snapshot = snapshot(
            artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"],
            store=snapshot_store,
        ).set_display_name("snapshot-model")
        rolled = rollout(
            model_id=model.outputs["model_id"], endpoint_name=endpoint_name, gate=gate,
            dataset_uri=dataset, dataset_name=dataset_name, target_column=target_column,
            test_size=test_size, random_state=random_state, namespace=namespace,
            serve_config=checked.outputs["checked_serve_config"], replay=replay,
        ).set_display_name("rollout").after(model_snapshot)
        for task in (checked, model, model_snapshot, rolled):
            # These steps change the world (MLMD records, endpoints): never skip one because
            # an identical earlier run was cached.
            task.set_caching_options(False)
        for task in (model_snapshot, rolled):
            options.apply(task)
        return PipelineOutputs(
            model.outputs["model_id"], rolled.outputs["decision"], rolled.outputs["promoted"]
        )

    return checked_pipeline(sklearn_rollout, name=PIPELINE_NAME, description=DESCRIPTION)


pipeline = make_pipeline()
