"""Smoke-test a served endpoint with held-out requests: the logic behind ``smoke_predict``.

Like TFX's InfraValidator, but against the real endpoint: each held-out instance is sent as its
own request, retried until a deadline while the endpoint is not yet answering (KServe can report
Ready and still answer 404 for a moment, kserve/kserve#1658), and the answers are compared with
the predictions the training step recorded: exactly for class labels, within a tolerance for
numeric values such as probabilities.

:func:`check_predictions` takes any ``predict`` callable, so it is tested without a server;
:func:`smoke_endpoint` wires it to :class:`kfp_serve.serving.Endpoint`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kfp_serve.retry import retrying
from kfp_serve.serving.constants import PREDICT_PROBA_ENV
from kfp_serve.serving.runtime.fidelity import KFP_SERVE as KFP_SERVE_RUNTIME
from kfp_serve.serving.runtime.fidelity import LGB_SERVER, SKLEARN_SERVER, XGB_SERVER

BLESSED = "blessed"
MISMATCH = "mismatch"
TIMEOUT = "timeout"
ERROR = "error"
VERDICTS = (BLESSED, MISMATCH, TIMEOUT, ERROR)

OUTPUT_LABEL = "label"
OUTPUT_VALUE = "value"
#: HTTP statuses worth retrying: not found yet, overloaded, starting, gateway not wired yet.
RETRY_STATUSES = frozenset({404, 408, 425, 429, 500, 502, 503, 504})
#: How many mismatches a report lists (the count covers all of them).
MAX_REPORTED_MISMATCHES = 5

Predict = Callable[[list[Any]], Sequence[Any]]


@dataclass
class SmokeResult:
    """The outcome of a smoke test.

    Attributes:
        verdict: One of :data:`VERDICTS`.
        message: One line saying what happened and, on failure, what to check.
        endpoint: The endpoint name (or URL) that was tested.
        n_requests: Requests that got an answer.
        n_matched: Answers equal to the expected prediction.
        n_expected: Requests that should have been answered.
        attempts: Requests sent, retries included.
        latencies_ms: Latency of each answered request, in order.
        mismatches: The first few mismatches: {"index", "expected", "got"}.
        elapsed_s: Wall time of the whole test.
        output: "label" (exact comparison) or "value" (within ``tolerance``).
        tolerance: Absolute and relative tolerance used for values.
    """

    verdict: str
    message: str
    endpoint: str = ""
    n_requests: int = 0
    n_matched: int = 0
    n_expected: int = 0
    attempts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    output: str = OUTPUT_LABEL
    tolerance: float = 0.0

    @property
    def blessed(self) -> bool:
        """True when every request was answered with the expected prediction."""
        return self.verdict == BLESSED

    @property
    def p50_ms(self) -> float:
        """Median request latency in milliseconds (0 when nothing was answered)."""
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        """99th-percentile request latency in milliseconds (0 when nothing was answered)."""
        return percentile(self.latencies_ms, 99)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for KFP's Metrics artifact."""
        return {
            "blessed": 1.0 if self.blessed else 0.0,
            "accuracy_vs_expected": (self.n_matched / self.n_expected) if self.n_expected else 0.0,
            "requests": float(self.n_requests),
            "attempts": float(self.attempts),
            "latency_p50_ms": round(self.p50_ms, 3),
            "latency_p99_ms": round(self.p99_ms, 3),
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, with the derived fields."""
        data = asdict(self)
        data.update(blessed=self.blessed, p50_ms=self.p50_ms, p99_ms=self.p99_ms)
        return data

    def to_markdown(self) -> str:
        """A short human report (KFP renders a Markdown artifact in the run view)."""
        icon = "✅" if self.blessed else "❌"
        lines = [
            f"# Smoke test: {icon} {self.verdict}",
            "",
            self.message,
            "",
            "| | |",
            "|---|---|",
            f"| endpoint | `{self.endpoint}` |",
            f"| answered | {self.n_requests} / {self.n_expected} |",
            f"| matched | {self.n_matched} / {self.n_expected} |",
            f"| comparison | {self._comparison()} |",
            f"| attempts (with retries) | {self.attempts} |",
            f"| latency p50 | {self.p50_ms:.1f} ms |",
            f"| latency p99 | {self.p99_ms:.1f} ms |",
            f"| elapsed | {self.elapsed_s:.2f} s |",
        ]
        if self.mismatches:
            lines += ["", "## Mismatches", "", "| # | expected | got |", "|---|---|---|"]
            lines += [
                f"| {m['index']} | `{_short(m['expected'])}` | `{_short(m['got'])}` |"
                for m in self.mismatches
            ]
        return "\n".join(lines) + "\n"

    def _comparison(self) -> str:
        if self.output == OUTPUT_LABEL:
            return "exact (labels)"
        return f"values within {self.tolerance:g}"


class SmokeTestFailed(Exception):
    """Raised by callers that fail a run on a verdict other than blessed."""

    def __init__(self, result: SmokeResult) -> None:
        super().__init__(f"smoke test {result.verdict}: {result.message}")
        self.result = result


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every value reported was measured)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def predictions_match(expected: Any, got: Any, output: str, tolerance: float) -> bool:
    """Compare one prediction: exact for labels, ``math.isclose`` element-wise for values."""
    if output == OUTPUT_LABEL:
        return _label_equal(expected, got)
    if isinstance(expected, list | tuple) or isinstance(got, list | tuple):
        if not (isinstance(expected, list | tuple) and isinstance(got, list | tuple)):
            return False
        return len(expected) == len(got) and all(
            predictions_match(e, g, output, tolerance) for e, g in zip(expected, got, strict=True)
        )
    try:
        return math.isclose(float(expected), float(got), rel_tol=tolerance, abs_tol=tolerance)
    except (TypeError, ValueError):
        return False


def check_predictions(
    predict: Predict,
    instances: Sequence[Any],
    expected: Sequence[Any],
    *,
    expected_values: Sequence[Any] | None = None,
    output: str = OUTPUT_LABEL,
    tolerance: float = 1e-6,
    deadline_s: float = 120.0,
    retry_interval_s: float = 0.5,
    endpoint: str = "",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SmokeResult:
    """Send each instance as its own request and compare the answers with ``expected``.

    Transient failures (connection errors, the statuses in :data:`RETRY_STATUSES`) are retried
    every ``retry_interval_s`` until ``deadline_s`` after the start; other client errors (a 400
    for a malformed request, say) end the test at once, since retrying cannot fix them.

    Args:
        predict: Sends ``[instance]`` and returns the list of predictions.
        instances: Requests to send, one per call.
        expected: The prediction expected for each instance.
        expected_values: Optional class probabilities for each instance: an answer within
            ``tolerance`` of them also matches (a runtime serving probabilities, such as the
            stock xgbserver, or ``PREDICT_PROBA``). A single number is compared with the
            probability of the positive class of a binary classifier.
        output: "label" or "value".
        tolerance: Tolerance for "value" comparisons (relative and absolute).
        deadline_s: Give up after this many seconds.
        retry_interval_s: Pause between retries.
        endpoint: Name or URL used in messages.
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).

    Returns:
        A :class:`SmokeResult`; never raises for a failing endpoint.
    """
    if output not in (OUTPUT_LABEL, OUTPUT_VALUE):
        raise ValueError(f"output must be {OUTPUT_LABEL!r} or {OUTPUT_VALUE!r}, got {output!r}")
    if len(instances) != len(expected):
        raise ValueError(f"{len(instances)} instances but {len(expected)} expected predictions")
    if expected_values is not None and len(expected_values) != len(expected):
        raise ValueError(
            f"{len(expected)} expected predictions but {len(expected_values)} expected values"
        )
    start = clock()
    result = SmokeResult(
        verdict=BLESSED,
        message="",
        endpoint=endpoint,
        n_expected=len(instances),
        output=output,
        tolerance=tolerance,
    )
    mismatched = 0
    def send(instance: Any) -> list[Any]:
        result.attempts += 1
        sent = clock()
        try:
            answer = list(predict([instance]))
        except Exception as e:  # noqa: BLE001 - any client failure is classified here
            raise (_Transient if _retryable(e) else _Fatal)(e) from e
        result.latencies_ms.append((clock() - sent) * 1000.0)
        return answer

    for index, (instance, want) in enumerate(zip(instances, expected, strict=True)):
        attempts = retrying(
            deadline=deadline_s - (clock() - start),
            on=_Transient,
            first_wait=retry_interval_s,
            max_wait=retry_interval_s,
            clock=clock,
            sleep=sleep,
        )
        try:
            answer = attempts(send, instance)
        except _Fatal as e:
            return _finish(
                result,
                ERROR,
                f"request {index} failed and retrying cannot help: {_describe(e.error)}",
                start,
                clock,
            )
        except _Transient as e:
            return _finish(
                result,
                TIMEOUT,
                f"no answer to request {index} within {deadline_s:g} s "
                f"(last error: {_describe(e.error)}); check that the endpoint is running",
                start,
                clock,
            )
        result.n_requests += 1
        got = answer[0] if len(answer) == 1 else answer
        alternative = expected_values[index] if expected_values is not None else None
        if predictions_match(want, got, output, tolerance) or (
            alternative is not None and _values_match(alternative, got, tolerance)
        ):
            result.n_matched += 1
        else:
            mismatched += 1
            if len(result.mismatches) < MAX_REPORTED_MISMATCHES:
                result.mismatches.append({"index": index, "expected": want, "got": got})
    if mismatched:
        return _finish(
            result,
            MISMATCH,
            f"{mismatched} of {len(instances)} predictions differ from the "
            "ones recorded at training time; the endpoint serves a different model, transformer "
            "or runtime than was trained",
            start,
            clock,
        )
    return _finish(
        result,
        BLESSED,
        f"all {len(instances)} predictions match the ones recorded at training time",
        start,
        clock,
    )


def smoke_endpoint(
    endpoint_name: str,
    samples_path: str | os.PathLike[str],
    *,
    namespace: str | None = None,
    tolerance: float = 1e-6,
    deadline_s: float = 120.0,
    retry_interval_s: float = 0.5,
    model: str | None = None,
) -> SmokeResult:
    """Smoke-test the served endpoint ``endpoint_name`` with a samples file from training.

    Args:
        endpoint_name: The InferenceService name.
        samples_path: The JSON samples file (see ``kfp_serve.artifacts.training``).
        namespace: The endpoint's namespace on a cluster; None for the default.
        model: The hosted model to test, on a multi-model endpoint (``serve_many``); the
            result names it as ``endpoint/model``.
        tolerance: Tolerance for numeric predictions.
        deadline_s: Overall deadline in seconds.
        retry_interval_s: Pause between retries.

    Returns:
        A :class:`SmokeResult`.
    """
    from kfp_serve.artifacts.training import read_samples
    from kfp_serve.serving.endpoint import Endpoint, response_predictions
    from kfp_serve.serving.errors import ServingError

    samples = read_samples(samples_path)
    label = f"{endpoint_name}/{model}" if model else endpoint_name
    try:
        client = Endpoint(endpoint_name, namespace=namespace)
    except ServingError as e:
        # No such endpoint (or no URL yet): a verdict, so a "not blessed" run can record it.
        return SmokeResult(
            verdict=ERROR, message=f"cannot reach endpoint {endpoint_name!r}: {_describe(e)}",
            endpoint=label, n_expected=len(samples["instances"]),
            output=samples["output"], tolerance=tolerance,
        )
    manifest = client.status.manifest or {}
    expected, output, alternatives = runtime_expectation(manifest, samples)

    def predict(x: Any) -> list[Any]:
        return response_predictions(client.predict(x, model=model))

    return check_predictions(
        predict,
        samples["instances"],
        expected,
        expected_values=alternatives,
        output=output,
        tolerance=tolerance,
        deadline_s=deadline_s,
        retry_interval_s=retry_interval_s,
        endpoint=label,
    )


def runtime_expectation(
    manifest: dict[str, Any], samples: dict[str, Any]
) -> tuple[list[Any], str, list[Any] | None]:
    """What the runtime named in ``manifest`` answers for the samples: (expected, output kind,
    accepted alternatives).

    ``kserve-xgbserver`` and ``kserve-lgbserver`` answer the Booster's output (class
    probabilities; p(positive class) alone for a binary classifier); ``kserve-sklearnserver``
    and ``kfp-serve`` answer labels, or probabilities with ``PREDICT_PROBA=true``. Only that
    answer matches. A manifest naming no known runtime (a custom container), or samples without
    probabilities, keep the lenient "labels or probabilities" comparison.
    """
    values = samples.get("expected_values")
    model = ((manifest.get("spec") or {}).get("predictor") or {}).get("model") or {}
    runtime = model.get("runtime")
    proba = any(
        isinstance(e, dict)
        and e.get("name") == PREDICT_PROBA_ENV
        and str(e.get("value", "")).lower() == "true"
        for e in model.get("env") or []
    )
    if values is None or runtime not in (
        XGB_SERVER, LGB_SERVER, SKLEARN_SERVER, KFP_SERVE_RUNTIME
    ):
        return samples["expected"], samples["output"], values
    if runtime in (XGB_SERVER, LGB_SERVER):
        booster = [v[1] if isinstance(v, list) and len(v) == 2 else v for v in values]
        return booster, OUTPUT_VALUE, None
    if proba:
        return values, OUTPUT_VALUE, None
    return samples["expected"], samples["output"], None


def _finish(
    result: SmokeResult, verdict: str, message: str, start: float, clock: Callable[[], float]
) -> SmokeResult:
    result.verdict = verdict
    result.message = message
    result.elapsed_s = clock() - start
    return result


def _status_of(error: BaseException) -> int | None:
    for candidate in (error, getattr(error, "response", None)):
        for attr in ("status_code", "status"):
            value = getattr(candidate, attr, None)
            if isinstance(value, int):
                return value
    return None


class _Failed(Exception):
    """A failed request, classified; ``error`` is what the client raised."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Transient(_Failed):
    """Worth another attempt (the endpoint is starting or briefly unavailable)."""


class _Fatal(_Failed):
    """Retrying cannot help (a malformed request, a model that refuses the rows)."""


def _retryable(error: BaseException) -> bool:
    status = _status_of(error)
    # No status: a connection/timeout error while the server starts, which is worth a retry.
    return status is None or status in RETRY_STATUSES


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _values_match(probabilities: Any, got: Any, tolerance: float) -> bool:
    if isinstance(got, list | tuple):
        return predictions_match(probabilities, got, OUTPUT_VALUE, tolerance)
    if isinstance(got, bool) or not isinstance(got, int | float):
        return False
    if isinstance(probabilities, list | tuple) and len(probabilities) == 2:
        # A binary classifier's runtime may answer p(positive class) alone.
        return predictions_match(probabilities[1], got, OUTPUT_VALUE, tolerance)
    return False


def _label_equal(expected: Any, got: Any) -> bool:
    if expected == got:
        return True
    # A label may come back as "1" or 1.0 for an expected 1 (JSON and runtimes vary).
    try:
        return float(expected) == float(got)
    except (TypeError, ValueError):
        return str(expected) == str(got)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
