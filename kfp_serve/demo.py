"""``make demo``: the sklearn-with-transformer pipeline, run locally end to end, explained."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

PIPELINE = "sklearn-transformer"
# Two iris flowers (setosa-like and virginica-like) to show a prediction through the endpoint.
SAMPLE_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def run_demo(console: Console) -> dict:
    """Run the pipeline on the embedded defaults, then query the endpoint it left running."""
    from kfp_serve.pipelines.local_run import run_local
    from kfp_serve.serving.endpoint import Endpoint
    from kfp_serve.serving.errors import ServingError

    # The pipeline's own defaults, exactly as `kfp-serve run sklearn-transformer`: a re-run
    # trains the same bytes and reuses the recorded versions.
    console.print(f"[bold]kfp-serve demo[/bold]: running pipeline {PIPELINE!r} locally")
    result = run_local(PIPELINE, {}, progress=True)
    endpoint = Endpoint(result["endpoint_name"])
    prediction = endpoint.predict(SAMPLE_ROWS)

    table = Table(title="kfp-serve demo: done", show_header=False)
    table.add_row("endpoint URL", str(result["endpoint_url"]))
    table.add_row("sample rows", str(SAMPLE_ROWS))
    table.add_row("prediction (via Endpoint)", str(prediction))
    table.add_row("smoke test", str(result["smoke_verdict"]))
    table.add_row("MLMD model id", str(result["model_id"]))
    table.add_row("MLMD transformer id", str(result["transformer_id"]))
    for step, seconds in result["step_seconds"].items():
        table.add_row(f"  step {step}", f"{seconds:.1f} s")
    table.add_row("pipeline wall time", f"{result['wall_seconds']:.1f} s")
    console.print(table)
    name = result["endpoint_name"]
    console.print(
        f"Try: kfp-serve predict {name} --data '[[5.9, 3.0, 5.1, 1.8]]'\n"
        f"     kfp-serve lineage {result['model_id']}\n"
        f"Stop the endpoint with: kfp-serve stop {name}"
    )
    if not result["blessed"]:
        raise ServingError(f"the smoke test did not bless the endpoint: {result['smoke_verdict']}")
    return result
