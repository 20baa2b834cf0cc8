"""The ``smoke_predict_many`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from kfp_serve.components.defs._base import component


@component
def smoke_predict_many(
    samples: Input[list[Dataset]],
    report: Output[Markdown],
    metrics: Output[Metrics],
    endpoint_name: str,
    model_ids: list[int],
    namespace: str = "",
    tolerance: float = 1e-6,
    deadline: float = 120.0,
    fail_on_mismatch: bool = True,
) -> NamedTuple("SmokeManyOutputs", [("blessed", bool), ("verdict", str)]):
    """Smoke-test every model of a multi-model endpoint with its own held-out requests.

    Each model is asked at its own name on the endpoint with the requests held out when it
    was trained, retried until a deadline while it is not answering yet, and compared with
    the predictions recorded then, exactly as smoke_predict does for one model. The endpoint
    is blessed when every model is.

    Args:
        samples: The train steps' samples outputs, collected from the loop that trained the
            models (in the order of model_ids).
        report: Markdown report, one section per model.
        metrics: Per model (prefixed with its name) verdict, match rate and p50/p99 latency,
            and the number of blessed models.
        endpoint_name: The multi-model endpoint to test.
        model_ids: MLMD ids of the hosted models, collected from the same loop as samples.
        namespace: Kubernetes namespace of the endpoint; empty for the default.
        tolerance: Allowed absolute/relative difference for numeric predictions.
        deadline: Seconds to keep retrying each model before giving up.
        fail_on_mismatch: Fail the run unless every model is blessed; when false, record the
            verdict and let the run succeed.

    Returns:
        blessed: True when every model answered as trained.
        verdict: "blessed", or the first other verdict ("mismatch", "timeout", "error").
    """
    from kfp_serve.components.ops import smoke_many
    from kfp_serve.serving.smoke import SmokeTestFailed

    results = smoke_many(
        endpoint_name, model_ids, [s.path for s in samples], namespace=namespace,
        tolerance=tolerance, deadline=deadline,
    )
    with open(report.path, "w") as f:
        f.write("\n\n".join(f"## {name}\n\n{result.to_markdown()}" for name, result in results))
    for name, result in results:
        for key, value in result.metrics().items():
            metrics.log_metric(f"{name}.{key}", value)
    metrics.log_metric("blessed_models", float(sum(r.blessed for _, r in results)))
    failed = [r for _, r in results if not r.blessed]
    if fail_on_mismatch and failed:
        raise SmokeTestFailed(failed[0])
    return (not failed, failed[0].verdict if failed else "blessed")
