"""The ``rollout`` component."""

# No ``from __future__ import annotations`` here: KFP reads the annotations as objects.
from typing import NamedTuple

from kfp.dsl import Markdown, Metrics, Output

from kfp_serve.components.defs._base import component


@component
def rollout(
    report: Output[Markdown],
    metrics: Output[Metrics],
    model_id: int,
    endpoint_name: str,
    gate: str,
    dataset_uri: str = "",
    dataset_name: str = "iris",
    target_column: str = "target",
    test_size: float = 0.2,
    random_state: int = 42,
    champion: str = "",
    namespace: str = "",
    serve_config: str = "{}",
    replay: bool = False,
    timeout: float = 300.0,
) -> NamedTuple("RolloutOutputs", [("decision", str), ("promoted", bool)]):
    """Take a candidate model to production only if it earns it (a gated rollout).

    Offline gate: on the held-out data of the train step, the candidate's metrics must meet the
    gate's bounds and be no worse than the champion's (its alias, else what the endpoint
    serves) by more than the change threshold. Then a canary gets the gate's percent of the
    endpoint's traffic while the stable revision's requests are mirrored to it; over the live
    window its error rate, p99 latency against the stable revision's and its agreement with
    the stable answers decide: promote and move the alias, or roll back (the alias stays).
    A run stopped mid-canary leaves the stable revision serving.

    Args:
        report: The verdict as Markdown: every threshold, the measured value and the reason.
        metrics: The same numbers as KFP metrics (1.0 = passed).
        model_id: MLMD id of the candidate Model artifact (a submit_model output).
        endpoint_name: The endpoint (InferenceService) to roll the candidate out on.
        gate: The gate as JSON or YAML, e.g. {"offline": {"accuracy": {"min": 0.9,
            "max_change": 0.01}}, "canary": 20, "live": {"window_requests": 500}}.
        dataset_uri: The train step's dataset_uri (the held-out rows are split the same way).
        dataset_name: The train step's dataset_name.
        target_column: The train step's target_column.
        test_size: The train step's test_size.
        random_state: The train step's random_state.
        champion: A model reference to compare with, e.g. "iris:1.0.0"; empty for the alias.
        namespace: Kubernetes namespace; empty for the pipeline's own.
        serve_config: The candidate's ServeConfig as a JSON object.
        replay: Send the held-out rows to the endpoint during the live window, for a run with
            no clients.
        timeout: Seconds the candidate gets to become Ready.

    Returns:
        decision: "promoted", "rolled back", "rejected offline" or "served" (first revision).
        promoted: True when the candidate serves all traffic now.
    """
    from kfp_serve.components.ops import rollout as gated

    result = gated(
        model_id, endpoint_name, gate, dataset_path=dataset_uri, dataset_name=dataset_name,
        target_column=target_column, test_size=test_size, random_state=random_state,
        champion=champion, serve_config=serve_config, namespace=namespace, replay=replay,
        timeout=timeout,
    )
    with open(report.path, "w") as f:
        f.write(result.to_markdown())
    for key, value in result.to_metrics().items():
        metrics.log_metric(key, value)
    return (result.decision, result.promoted)
