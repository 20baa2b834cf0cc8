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

import asyncio
import os
import shutil
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
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


#: Observations a deferred histogram holds before it adds them up (bounds its memory).
FLUSH_EVERY = 1024
#: Seconds between the periodic flushes (what another worker's scrape may lag behind).
FLUSH_INTERVAL_S = 1.0


class DeferredHistogram:
    """One labelled child of a histogram whose observations are added up in bulk.

    ``Histogram.observe`` takes two locks and walks the buckets for every request (about 2 us,
    three times per request: a fifth of a small model's whole serving cost). Here an observation
    is a list append; :func:`flush` sorts a batch into buckets and adds each bucket's count
    with one increment. A scrape flushes first, so it misses nothing of its own process;
    :func:`flush_periodically` bounds what other workers' scrapes lag behind.
    """

    __slots__ = ("child", "bounds", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        # prometheus_client keeps the bucket bounds (ending with +Inf) and values per child.
        self.bounds = list(child._upper_bounds)
        self.pending: list[float] = []
        _DEFERRED.append(self)

    def observe(self, amount: float) -> None:
        pending = self.pending
        pending.append(amount)
        if len(pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        samples, self.pending = self.pending, []
        if not samples:
            return
        bounds = self.bounds
        counts = [0] * len(bounds)
        for amount in samples:
            counts[bisect_left(bounds, amount)] += 1  # the first bucket with le >= amount
        self.child._sum.inc(sum(samples))
        for i, n in enumerate(counts):
            if n:
                self.child._buckets[i].inc(n)


_DEFERRED: list[DeferredHistogram] = []


def flush() -> None:
    """Add every pending observation and request count of this process to its metric."""
    for histogram in _DEFERRED:
        histogram.flush()
    _flush_counts()


async def flush_periodically(interval: float = FLUSH_INTERVAL_S) -> None:
    """Flush every ``interval`` seconds (run as a task in each worker's event loop)."""
    while True:
        await asyncio.sleep(interval)
        flush()


@dataclass(frozen=True)
class ModelTimers:
    """The latency histograms of one model (children already labelled)."""

    preprocess: Any
    predict: Any
    postprocess: Any
    explain: Any

    def observe_inference(self, start: float, mid: float, end: float, stop: float) -> None:
        """One inference's three phases (preprocess ``start``..``mid``, predict ..``end``,
        postprocess ..``stop``): one call instead of three per request."""
        pre = self.preprocess.pending
        pre.append(mid - start)
        self.predict.pending.append(end - mid)
        self.postprocess.pending.append(stop - end)
        if len(pre) >= FLUSH_EVERY:
            self.preprocess.flush()
            self.predict.flush()
            self.postprocess.flush()


def timers_for(model_name: str) -> ModelTimers:
    """Labelled histogram children for ``model_name`` (look-ups done once, not per request)."""
    return ModelTimers(
        preprocess=DeferredHistogram(PRE_HIST_TIME.labels(model_name)),
        predict=DeferredHistogram(PREDICT_HIST_TIME.labels(model_name)),
        postprocess=DeferredHistogram(POST_HIST_TIME.labels(model_name)),
        explain=DeferredHistogram(EXPLAIN_HIST_TIME.labels(model_name)),
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


#: Requests answered since the last flush, by (model, route, status). A counter's ``inc``
#: takes a lock (half a microsecond per request); a dict entry is added to it at each flush.
_pending_counts: dict[tuple[str, str, int], int] = {}


def request_counter() -> Callable[[str, str, int], None]:
    """What counts one answered request: ``(model_name, route, status) -> None``.

    A lone server adds counts up in a dict that each flush (a scrape's first) moves into
    ``kfp_serve_requests``. Workers sharing their metrics count at once: a scrape answered by
    one worker must already hold the others' requests, and it cannot flush theirs.
    """
    return _count_now if _registry is not REGISTRY else _count_later


def _count_later(model_name: str, route: str, status: int) -> None:
    key = (model_name, route, status)
    _pending_counts[key] = _pending_counts.get(key, 0) + 1


_request_children: dict[tuple[str, str, int], Any] = {}


def _requests_child(key: tuple[str, str, int]) -> Any:
    """``kfp_serve_requests`` labelled with ``key``, looked up once per label set."""
    child = _request_children.get(key)
    if child is None:
        model_name, route, status = key
        child = _request_children[key] = REQUESTS.labels(model_name, route, str(status))
    return child


def _count_now(model_name: str, route: str, status: int) -> None:
    _requests_child((model_name, route, status)).inc()


def _flush_counts() -> None:
    global _pending_counts
    counts, _pending_counts = _pending_counts, {}
    for key, n in counts.items():
        _requests_child(key).inc(n)


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
    flush()
    return generate_latest(_registry)
