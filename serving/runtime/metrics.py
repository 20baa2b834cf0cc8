"""Prometheus metrics of a runtime server, under KServe's names, for ``GET /metrics``.

The four latency histograms are KServe's own objects (``kserve.metrics``: the same names, help
texts and ``model_name`` label a KServe model server exports), so dashboards and alerts written
for KServe read ours unchanged. kfp-serve adds request counts by route and status, and the
payload logger's outcomes.

With ``--workers N`` the workers share their metrics (:func:`share_across_workers`): every value
lives in a memory-mapped file of a per-server directory (prometheus_client's multiprocess mode),
and a scrape, whichever worker answers it, reads all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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


#: The registry a scrape reads: this process's, or every worker's (see share_across_workers).
_registry: Any = REGISTRY


def share_across_workers() -> str:
    """Put every metric value created from now on in prometheus_client's multiprocess files,
    so that each worker's scrape answers the sum over all workers.

    Call it once, in the server process, before any labelled child is created (the children
    hold the values) and before the workers fork: a forked worker notices its new pid and
    writes its own files. Returns the directory; :func:`remove_shared` deletes it at exit.
    """
    global _registry
    from prometheus_client import CollectorRegistry, values
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = tempfile.mkdtemp(prefix="kfp-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    _registry = registry
    return directory


def remove_shared(directory: str) -> None:
    """Delete the files of :func:`share_across_workers` (the server is stopping)."""
    shutil.rmtree(directory, ignore_errors=True)


def exposition() -> bytes:
    """Every metric of this server (of all its workers) in the Prometheus text format."""
    return generate_latest(_registry)
