"""Prometheus metrics of a runtime server, under KServe's names, for ``GET /metrics``.

The four latency histograms are KServe's own objects (``kserve.metrics``: the same names, help
texts and ``model_name`` label a KServe model server exports), so dashboards and alerts written
for KServe read ours unchanged. kfp-serve adds request counts by route and status, and the
payload logger's outcomes.

With ``--workers N`` every worker process has its own registry; a scrape reaches one worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

# kserve is imported through _kserve (it must not read sys.argv); kserve.model has registered
# kserve.metrics by then.
from kfp_serve.serving.runtime._kserve import kserve  # noqa: F401  isort: skip
from kserve.metrics import (  # isort: skip
    EXPLAIN_HIST_TIME,
    POST_HIST_TIME,
    PRE_HIST_TIME,
    PREDICT_HIST_TIME,
)

#: Content type of the text exposition format.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Label naming the model, as KServe's histograms do.
MODEL_LABEL = "model_name"

REQUESTS = Counter(
    "kfp_serve_requests",
    "Requests answered, by model, route and HTTP status.",
    [MODEL_LABEL, "route", "status"],
)
PAYLOAD_EVENTS = Counter(
    "kfp_serve_payload_log_events",
    "Payload-logging CloudEvents by outcome: sent, retried (one per extra attempt), dropped.",
    ["outcome"],
)

BATCHES = Counter(
    "kfp_serve_batches",
    "Model calls made by the batcher (each holds one or more requests).",
    [MODEL_LABEL],
)
BATCHED_REQUESTS = Counter(
    "kfp_serve_batched_requests",
    "Requests answered through the batcher.",
    [MODEL_LABEL],
)


@dataclass(frozen=True)
class ModelTimers:
    """The latency histograms of one model (children already labelled)."""

    preprocess: Any
    predict: Any
    postprocess: Any
    explain: Any


def timers_for(model_name: str) -> ModelTimers:
    """Labelled histogram children for ``model_name`` (look-ups done once, not per request)."""
    return ModelTimers(
        preprocess=PRE_HIST_TIME.labels(model_name),
        predict=PREDICT_HIST_TIME.labels(model_name),
        postprocess=POST_HIST_TIME.labels(model_name),
        explain=EXPLAIN_HIST_TIME.labels(model_name),
    )


@contextmanager
def timed(histogram: Any | None) -> Iterator[None]:
    """Observe the block's wall time in ``histogram`` (nothing when metrics are off)."""
    if histogram is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - start)


def count_request(model_name: str, route: str, status: int) -> None:
    """Count one answered request."""
    REQUESTS.labels(model_name, route, str(status)).inc()


def exposition() -> bytes:
    """Every metric of this process in the Prometheus text format."""
    return generate_latest(REGISTRY)
