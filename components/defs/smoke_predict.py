"""The ``smoke_predict`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from kfp_serve.components.defs._base import component


@component
def smoke_predict(
    samples: Input[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
    endpoint_name: str,
    namespace: str = "",
    tolerance: float = 1e-6,
    deadline: float = 120.0,
    fail_on_mismatch: bool = True,
) -> NamedTuple("SmokeOutputs", [("blessed", bool), ("verdict", str)]):
    """Smoke-test a served endpoint with held-out requests and bless it or fail the run.

    Each held-out request is sent to the real endpoint, retried until a deadline while it is
    not answering yet, and the answer is compared with the prediction recorded at training
    time: exactly for class labels, within a tolerance for probabilities. The p50/p99 latency
    and the verdict are written as a Markdown report and as metrics.

    Args:
        samples: Held-out requests and expected predictions (a train step's samples output).
        report: Markdown report of the smoke test.
        metrics: Verdict, match rate and p50/p99 latency.
        endpoint_name: The endpoint (InferenceService) name to test.
        namespace: Kubernetes namespace of the endpoint; empty for the default.
        tolerance: Allowed absolute/relative difference for numeric predictions.
        deadline: Seconds to keep retrying before giving up.
        fail_on_mismatch: Fail the run unless blessed; when false, record a "not blessed"
            verdict and let the run succeed.

    Returns:
        blessed: True when every answer matched.
        verdict: "blessed", "mismatch", "timeout" or "error".
    """
    from kfp_serve.serving.smoke import SmokeTestFailed, smoke_endpoint

    result = smoke_endpoint(
        endpoint_name, samples.path, namespace=namespace or None, tolerance=tolerance,
        deadline_s=deadline,
    )
    with open(report.path, "w") as f:
        f.write(result.to_markdown())
    for key, value in result.metrics().items():
        metrics.log_metric(key, value)
    if fail_on_mismatch and not result.blessed:
        raise SmokeTestFailed(result)
    return (result.blessed, result.verdict)
