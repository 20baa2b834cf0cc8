"""The gates of a gated rollout, as pure functions over measured numbers.

Two decisions, each returning a verdict that lists every check (threshold, measured value,
reason) and renders as a Markdown report and as KFP ``Metrics`` values:

* the **offline gate** (``evaluate_offline``): on held-out data, the candidate's metrics meet
  absolute bounds and are not worse than the champion's by more than a change threshold, in the
  metric's own direction (accuracy/AUC: higher is better; log loss/RMSE: lower is better);
* the **live analysis** (``decide_live``): over a window of canary traffic (a request count,
  bounded by time), the canary's error rate, its p99 latency against the stable revision's, and
  its agreement with the stable revision on mirrored requests.

Nothing here serves, measures or reads a clock: callers pass numbers, so every rule is tested
as a table and a verdict can be recomputed from its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kfp_serve.serving.errors import ServeConfigError

HIGHER = "higher"
LOWER = "lower"
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

PROMOTE = "promote"
ROLLBACK = "rollback"
WAIT = "wait"

#: Keys of one metric's threshold spec.
MIN, MAX, MAX_CHANGE = "min", "max", "max_change"
_THRESHOLD_KEYS = (MIN, MAX, MAX_CHANGE)


class GateError(ServeConfigError):
    """A gate was configured with thresholds that cannot be evaluated."""


@dataclass(frozen=True)
class MetricSpec:
    """A metric the offline gate knows: its direction, task and how it is computed."""

    name: str
    direction: str
    task: str
    needs_scores: bool
    compute: Callable[[Sequence[Any], Sequence[Any]], float]


def _accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


def _log_loss(y_true: Sequence[Any], scores: Sequence[Any]) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y_true, scores))


def _auc(y_true: Sequence[Any], scores: Sequence[Any]) -> float:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    scores_arr = np.asarray(scores, dtype=float)
    if scores_arr.ndim == 2 and scores_arr.shape[1] == 2:
        scores_arr = scores_arr[:, 1]  # binary: the positive class's probability
    multi = scores_arr.ndim == 2
    return float(roc_auc_score(y_true, scores_arr, multi_class="ovr" if multi else "raise"))


def _rmse(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    from sklearn.metrics import mean_squared_error

    return float(math.sqrt(mean_squared_error(y_true, y_pred)))


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("accuracy", HIGHER, CLASSIFICATION, False, _accuracy),
        MetricSpec("log_loss", LOWER, CLASSIFICATION, True, _log_loss),
        MetricSpec("auc", HIGHER, CLASSIFICATION, True, _auc),
        MetricSpec("rmse", LOWER, REGRESSION, False, _rmse),
    )
}


def compute_metrics(
    task: str,
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    scores: Sequence[Any] | None = None,
    *,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """The task's metrics of one model on held-out data.

    Args:
        task: "classification" or "regression".
        y_true: The held-out labels/targets.
        y_pred: The model's predictions.
        scores: Class probabilities (``predict_proba``) for log loss and AUC; without them
            those metrics are left out.
        names: Only these metrics (default: every metric of the task that can be computed).

    Raises:
        GateError: unknown task or metric, or a metric of another task.
    """
    if task not in TASKS:
        raise GateError(f"task {task!r} is not one of {list(TASKS)}")
    if len(y_true) != len(y_pred):
        raise GateError(
            f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}: pass the predictions "
            "of the same held-out rows"
        )
    computable = [
        n for n, s in METRICS.items()
        if s.task == task and (scores is not None or not s.needs_scores)
    ]
    wanted = list(names) if names is not None else computable
    out = {}
    for name in wanted:
        spec = _spec(name)
        if spec.task != task:
            raise GateError(f"metric {name!r} is for {spec.task}, not {task}")
        if spec.needs_scores and scores is None:
            raise GateError(
                f"metric {name!r} needs class probabilities: pass scores=predict_proba(X)"
            )
        out[name] = spec.compute(y_true, scores if spec.needs_scores else y_pred)
    return out


def _spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise GateError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]


@dataclass(frozen=True)
class Threshold:
    """Bounds for one metric.

    Attributes:
        metric: A name from ``METRICS``.
        min: The candidate's value must be at least this.
        max: The candidate's value must be at most this.
        max_change: How much worse than the champion it may be (in the metric's units, in the
            metric's bad direction); 0 means "not worse", None means "not compared".
    """

    metric: str
    min: float | None = None
    max: float | None = None
    max_change: float | None = None

    def __post_init__(self) -> None:
        _spec(self.metric)
        for key in _THRESHOLD_KEYS:
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            ):
                raise GateError(f"threshold {self.metric}.{key} must be a number, got {value!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise GateError(
                f"threshold {self.metric}: min {self.min} is above max {self.max}, so no "
                "candidate could pass; swap them or drop one"
            )
        if self.max_change is not None and self.max_change < 0:
            raise GateError(
                f"threshold {self.metric}.max_change must be >= 0 (how much worse the candidate "
                f"may be), got {self.max_change}"
            )
        if self.min is None and self.max is None and self.max_change is None:
            raise GateError(f"threshold {self.metric} sets none of {', '.join(_THRESHOLD_KEYS)}")


def parse_thresholds(spec: Mapping[str, Mapping[str, float]]) -> list[Threshold]:
    """Thresholds from ``{"accuracy": {"min": 0.9, "max_change": 0.01}, ...}`` (JSON/YAML).

    Raises:
        GateError: unknown metric (lists the known ones), unknown key, min > max.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise GateError(
            "gate thresholds must be a non-empty mapping of metric to bounds, e.g. "
            '{"accuracy": {"min": 0.9, "max_change": 0.01}}'
        )
    out = []
    for metric, bounds in spec.items():
        _spec(metric)
        if not isinstance(bounds, Mapping):
            raise GateError(f"threshold {metric} must be a mapping of {list(_THRESHOLD_KEYS)}")
        unknown = sorted(set(bounds) - set(_THRESHOLD_KEYS))
        if unknown:
            raise GateError(
                f"threshold {metric}.{unknown[0]} is not a threshold key; use "
                f"{', '.join(_THRESHOLD_KEYS)}"
            )
        out.append(Threshold(metric, **dict(bounds)))
    return out


@dataclass(frozen=True)
class Check:
    """One threshold compared with one measured value."""

    name: str
    threshold: str
    measured: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of a gate: the decision and every check behind it."""

    gate: str
    decision: str
    checks: list[Check] = field(default_factory=list)
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.decision == PROMOTE

    def to_markdown(self) -> str:
        """A report for a Markdown artifact (KFP UI) or a terminal."""
        lines = [
            f"## {self.gate}: **{self.decision}**",
            "",
            self.reason,
            "",
            "| check | threshold | measured | result | reason |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            measured = "n/a" if c.measured is None else f"{c.measured:.6g}"
            result = "pass" if c.passed else "FAIL"
            lines.append(f"| {c.name} | {c.threshold} | {measured} | {result} | {c.reason} |")
        return "\n".join(lines) + "\n"

    def to_metrics(self) -> dict[str, float]:
        """Numbers for a KFP ``Metrics`` artifact (``log_metric`` takes floats only)."""
        prefix = self.gate.lower().replace(" ", "_")
        out = {f"{prefix}.passed": 1.0 if self.passed else 0.0}
        for c in self.checks:
            key = f"{prefix}.{c.name}"
            if c.measured is not None:
                out[f"{key}.measured"] = float(c.measured)
            out[f"{key}.passed"] = 1.0 if c.passed else 0.0
        return out


def _worse_by(spec: MetricSpec, candidate: float, champion: float) -> float:
    """How much worse the candidate is (negative when better)."""
    return champion - candidate if spec.direction == HIGHER else candidate - champion


def evaluate_offline(
    candidate: Mapping[str, float],
    thresholds: Sequence[Threshold] | Mapping[str, Mapping[str, float]],
    champion: Mapping[str, float] | None = None,
) -> Verdict:
    """The offline gate: promote only if every threshold holds.

    Args:
        candidate: The candidate's metrics on held-out data (``compute_metrics``).
        thresholds: ``Threshold``s, or their mapping form (``parse_thresholds``).
        champion: The current champion's metrics on the same data; None when there is no
            champion yet (change thresholds then pass, saying why).

    Raises:
        GateError: a threshold names a metric the candidate was not measured on.
    """
    if isinstance(thresholds, Mapping):
        thresholds = parse_thresholds(thresholds)
    checks: list[Check] = []
    for t in thresholds:
        spec = METRICS[t.metric]
        if t.metric not in candidate:
            raise GateError(
                f"threshold on {t.metric!r}, but the candidate was measured on "
                f"{', '.join(candidate) or 'nothing'}: compute it (compute_metrics) or drop it"
            )
        value = float(candidate[t.metric])
        if t.min is not None:
            ok = value >= t.min
            checks.append(Check(f"{t.metric}.min", f">= {t.min:g}", value, ok,
                                f"{t.metric} {value:.4g} {'>=' if ok else '<'} {t.min:g}"))
        if t.max is not None:
            ok = value <= t.max
            checks.append(Check(f"{t.metric}.max", f"<= {t.max:g}", value, ok,
                                f"{t.metric} {value:.4g} {'<=' if ok else '>'} {t.max:g}"))
        if t.max_change is not None:
            label = f"worse by <= {t.max_change:g} ({spec.direction} is better)"
            if champion is None or t.metric not in champion:
                checks.append(Check(f"{t.metric}.change", label, None, True,
                                    "no champion measured: nothing to compare with"))
                continue
            worse = _worse_by(spec, value, float(champion[t.metric]))
            ok = worse <= t.max_change + 1e-12
            how = f"worse by {worse:.4g}" if worse > 0 else f"better by {-worse:.4g}"
            checks.append(Check(
                f"{t.metric}.change", label, worse, ok,
                f"{how} than the champion's {float(champion[t.metric]):.4g}",
            ))
    failed = [c for c in checks if not c.passed]
    reason = (
        f"{len(failed)} of {len(checks)} checks failed: "
        + "; ".join(c.reason for c in failed)
        if failed
        else f"all {len(checks)} checks passed"
    )
    return Verdict("Offline gate", ROLLBACK if failed else PROMOTE, checks, reason)


# -- live analysis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveCriteria:
    """What the canary must show over its analysis window.

    Attributes:
        window_requests: Requests the canary must answer before a decision.
        window_seconds: The longest the window may stay open; reaching it with fewer requests
            rolls back (not enough evidence).
        max_error_rate: Highest fraction of canary requests that may fail (5xx/timeouts).
        max_p99_ratio: Canary p99 latency at most this times the stable revision's.
        min_agreement: Lowest fraction of mirrored requests where the canary's prediction
            equals the stable revision's; None to skip (a model expected to differ).
    """

    window_requests: int = 500
    window_seconds: float = 600.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    min_agreement: float | None = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.window_requests, bool) or not isinstance(self.window_requests, int) \
                or self.window_requests < 1:
            raise GateError(f"window_requests must be an int >= 1, got {self.window_requests!r}")
        if not self.window_seconds > 0:
            raise GateError(f"window_seconds must be > 0, got {self.window_seconds!r}")
        if not 0 <= self.max_error_rate <= 1:
            raise GateError(f"max_error_rate must be in [0, 1], got {self.max_error_rate!r}")
        if not self.max_p99_ratio > 0:
            raise GateError(f"max_p99_ratio must be > 0, got {self.max_p99_ratio!r}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise GateError(f"min_agreement must be in [0, 1], got {self.min_agreement!r}")


@dataclass(frozen=True)
class LiveWindow:
    """What was measured since the canary started.

    Attributes:
        elapsed_seconds: Time since the canary took traffic.
        canary_requests: Requests the canary answered (or failed).
        canary_errors: Of those, failures.
        canary_p99_ms: The canary's p99 latency.
        stable_p99_ms: The stable revision's p99 latency over the same window.
        mirrored: Requests mirrored to the canary whose answers were compared.
        agreed: Of those, answers equal to the stable revision's.
    """

    elapsed_seconds: float
    canary_requests: int
    canary_errors: int
    canary_p99_ms: float | None = None
    stable_p99_ms: float | None = None
    mirrored: int = 0
    agreed: int = 0

    def __post_init__(self) -> None:
        if self.canary_errors > self.canary_requests or self.canary_errors < 0:
            raise GateError(
                f"canary_errors ({self.canary_errors}) must be between 0 and canary_requests "
                f"({self.canary_requests})"
            )
        if self.agreed > self.mirrored or self.agreed < 0:
            raise GateError(f"agreed ({self.agreed}) must be between 0 and mirrored "
                            f"({self.mirrored})")


class Counts:
    """What one revision answered in a live window: requests, errors, and latencies (ms; at
    most ``max_samples`` kept, enough for a p99) — the router's mirror and the cluster's replay
    fill one each per revision."""

    __slots__ = ("requests", "errors", "latencies", "max_samples")

    def __init__(self, max_samples: int) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.max_samples = max_samples

    def add(self, ms: float | None) -> None:
        """One answer that took ``ms`` milliseconds, or a failure (None)."""
        self.requests += 1
        if ms is None:
            self.errors += 1
        elif len(self.latencies) < self.max_samples:
            self.latencies.append(ms)


def p99(latencies_ms: Sequence[float]) -> float | None:
    """The 99th percentile (nearest rank) of a window's latencies; None when empty."""
    if not latencies_ms:
        return None
    ordered = sorted(latencies_ms)
    return float(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)])


def decide_live(window: LiveWindow, criteria: LiveCriteria) -> Verdict:
    """Promote, roll back, or wait for more traffic.

    Rolls back early once the errors so far already exceed what the whole window allows (more
    traffic could not bring the rate back under the threshold). Otherwise waits until the
    window has ``window_requests`` requests, then promotes only if every check passes; a window
    that times out first rolls back.
    """
    c = criteria
    allowed_errors = c.max_error_rate * c.window_requests
    n = window.canary_requests
    rate = window.canary_errors / n if n else 0.0
    # Mid-window, the errors count against the whole window's allowance.
    errors_ok = (
        window.canary_errors <= allowed_errors if n < c.window_requests
        else rate <= c.max_error_rate
    )
    checks = [Check(
        "error_rate", f"<= {c.max_error_rate:g}", rate if n else None, errors_ok,
        f"{window.canary_errors} errors in {n} requests",
    )]
    if window.canary_p99_ms is not None and window.stable_p99_ms:
        ratio = window.canary_p99_ms / window.stable_p99_ms
        checks.append(Check(
            "p99_ratio", f"<= {c.max_p99_ratio:g}x stable", ratio, ratio <= c.max_p99_ratio,
            f"canary p99 {window.canary_p99_ms:.3g} ms vs stable {window.stable_p99_ms:.3g} ms",
        ))
    else:
        checks.append(Check("p99_ratio", f"<= {c.max_p99_ratio:g}x stable", None, True,
                            "no latency measured on both revisions yet"))
    if c.min_agreement is not None:
        agreement = window.agreed / window.mirrored if window.mirrored else None
        checks.append(Check(
            "agreement", f">= {c.min_agreement:g}", agreement,
            agreement is None or agreement >= c.min_agreement,
            f"{window.agreed} of {window.mirrored} mirrored predictions equal the stable's"
            if window.mirrored else "no mirrored requests compared yet",
        ))

    if window.canary_errors > allowed_errors:
        return Verdict("Live analysis", ROLLBACK, checks,
                       f"{window.canary_errors} errors already exceed the {allowed_errors:g} a "
                       f"{c.window_requests}-request window allows")
    if n < c.window_requests:
        if window.elapsed_seconds >= c.window_seconds:
            return Verdict("Live analysis", ROLLBACK, checks,
                           f"only {n} of {c.window_requests} requests in "
                           f"{window.elapsed_seconds:.0f} s (window {c.window_seconds:g} s): "
                           "not enough evidence to promote")
        return Verdict("Live analysis", WAIT, checks,
                       f"{n} of {c.window_requests} requests so far")
    if c.min_agreement is not None and not window.mirrored:
        failed_agreement = Check("agreement", f">= {c.min_agreement:g}", None, False,
                                 "no mirrored requests were compared over the window")
        checks = [ch if ch.name != "agreement" else failed_agreement for ch in checks]
    failed = [ch for ch in checks if not ch.passed]
    if failed:
        return Verdict("Live analysis", ROLLBACK, checks,
                       "; ".join(f"{ch.name}: {ch.reason}" for ch in failed))
    return Verdict("Live analysis", PROMOTE, checks,
                   f"all {len(checks)} checks passed over {n} requests")
