"""Request batching as KServe's ``batcher`` spec defines it (``maxBatchSize``, ``maxLatency``).

Concurrent requests are merged into one model call: the first request of a batch waits at most
``max_latency_ms`` for others; the batch runs as soon as it holds ``max_batch_size`` rows or the
wait is over. Each caller gets exactly its own rows of the result back (split by row counts, in
order). A request with more rows than ``max_batch_size`` runs alone, as KServe's batcher does.

The model call may be a plain function (the predictor's model) or a coroutine function (the
transformer's call to its predictor): a batch of the latter runs as a task, so new requests
gather into the next batch while it is on the wire.

Only inputs of the same kind are merged: numpy matrices with numpy matrices, DataFrames with
DataFrames (a model fitted on named columns); the decoded inputs of one model all have the same
columns and dtype already.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfp_serve.serving.errors import ServeConfigError

#: KServe's defaults when the batcher spec leaves a field out.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_LATENCY_MS = 500


@dataclass(frozen=True)
class BatcherSpec:
    """``maxBatchSize`` (rows per model call) and ``maxLatency`` (ms the first row may wait)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS

    def __post_init__(self) -> None:
        check_batcher_values(self.max_batch_size, self.max_latency_ms, "batcher")


def check_batcher_values(max_batch_size: Any, max_latency_ms: Any, path: str) -> None:
    """Refuse batcher values KServe's agent would refuse, naming the field.

    Raises:
        ServeConfigError: ``maxBatchSize`` < 1 or ``maxLatency`` < 1, or not integers.
    """
    meaning = {
        "maxBatchSize": ("rows merged into one model call", DEFAULT_MAX_BATCH_SIZE),
        "maxLatency": ("milliseconds the first request may wait", DEFAULT_MAX_LATENCY_MS),
    }
    for key, value in (("maxBatchSize", max_batch_size), ("maxLatency", max_latency_ms)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
            what, default = meaning[key]
            raise ServeConfigError(
                f"{path}.{key} must be a positive number, got {value!r}: the {what} "
                f"(KServe's default is {default})"
            )


#: A request waiting in a batch: its rows and its caller's future.
_Pending = tuple[Any, "asyncio.Future[Any]"]


def _rows(X: Any) -> int:
    return int(X.shape[0])


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=0)
    import pandas as pd

    return pd.concat(parts, axis=0, ignore_index=True)


class Batcher:
    """Merge concurrent ``predict`` calls of one model into batches.

    Args:
        predict: The model's predict on a validated input (rows first), plain or async; its
            result must have one entry (row) per input row.
        spec: Batch size and latency bound.
        on_batch: Called with the number of requests of every model call (for metrics).
    """

    def __init__(
        self,
        predict: Callable[[Any], Any],
        spec: BatcherSpec,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self._async = inspect.iscoroutinefunction(predict)
        #: Batches of an async predict still running (kept so they are not garbage-collected).
        self._running: set[asyncio.Task[None]] = set()
        self.spec = spec
        self._on_batch = on_batch
        self._pending: list[_Pending] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        #: Model calls made and rows they held (read by tests and benchmarks).
        self.calls = 0
        self.rows = 0

    async def predict(self, X: Any) -> Any:
        """The model's result for ``X``, computed in a batch with concurrent calls."""
        n = _rows(X)
        if n >= self.spec.max_batch_size:
            result = self._run_alone(X)
            return await result if self._async else result
        if self._pending and type(self._pending[0][0]) is not type(X):
            self._flush()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((X, future))
        self._rows += n
        if self._rows >= self.spec.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.spec.max_latency_ms / 1000.0, self._flush)
        return await future

    def _run_alone(self, X: Any) -> Any:
        self.calls += 1
        if self._on_batch is not None:
            self._on_batch(1)
        self.rows += _rows(X)
        return self._predict(X)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._rows = self._pending, [], 0
        if not batch:
            return
        self.calls += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        if self._async:
            task = asyncio.get_running_loop().create_task(self._run_async(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            return
        try:
            merged = _concat([x for x, _ in batch])
            result = self._predict(merged)
        except Exception:  # noqa: BLE001 - one caller's bad rows must not fail the others
            for x, future in batch:
                try:
                    single = self._predict(x)
                except Exception as e:  # noqa: BLE001 - handed to that caller
                    _settle(future, error=e)
                    continue
                _settle(future, single)
            return
        self._split(batch, merged, result)

    async def _run_async(self, batch: list[_Pending]) -> None:
        try:
            merged = _concat([x for x, _ in batch])
            result = await self._predict(merged)
        except Exception:  # noqa: BLE001 - one caller's bad rows must not fail the others
            singles = await asyncio.gather(
                *(self._predict(x) for x, _ in batch), return_exceptions=True
            )
            for (_, future), single in zip(batch, singles, strict=True):
                if isinstance(single, BaseException):
                    _settle(future, error=single)
                else:
                    _settle(future, single)
            return
        self._split(batch, merged, result)

    def _split(self, batch: list[_Pending], merged: Any, result: Any) -> None:
        """Hand each caller its own rows of the batch's result."""
        self.rows += _rows(merged)
        result = np.asarray(result)
        start = 0
        for x, future in batch:
            end = start + _rows(x)
            _settle(future, result[start:end])
            start = end


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    """Answer one caller, unless it has gone (client disconnected)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
