"""The offline gate and the live-analysis decision, as tables over measured numbers."""

from __future__ import annotations

import pytest

from kfp_serve.serving import gate
from kfp_serve.serving.gate import (
    PROMOTE,
    ROLLBACK,
    WAIT,
    GateError,
    LiveCriteria,
    LiveWindow,
    Threshold,
    compute_metrics,
    decide_live,
    evaluate_offline,
)

THRESHOLDS = {"accuracy": {"min": 0.9, "max_change": 0.01}, "log_loss": {"max_change": 0.05}}


@pytest.mark.parametrize(
    ("candidate", "champion", "decision", "failing"),
    [
        ({"accuracy": 0.95, "log_loss": 0.20}, {"accuracy": 0.94, "log_loss": 0.22}, PROMOTE, []),
        # Within the allowed change: slightly worse is still fine.
        ({"accuracy": 0.935, "log_loss": 0.26}, {"accuracy": 0.94, "log_loss": 0.22}, PROMOTE, []),
        ({"accuracy": 0.92, "log_loss": 0.20}, {"accuracy": 0.94, "log_loss": 0.22}, ROLLBACK,
         ["accuracy.change"]),
        # Lower is better for log loss: a higher one is a regression.
        ({"accuracy": 0.95, "log_loss": 0.30}, {"accuracy": 0.94, "log_loss": 0.22}, ROLLBACK,
         ["log_loss.change"]),
        ({"accuracy": 0.85, "log_loss": 0.20}, None, ROLLBACK, ["accuracy.min"]),
        ({"accuracy": 0.91, "log_loss": 0.90}, None, PROMOTE, []),
    ],
    ids=["better", "worse-within-change", "accuracy-dropped", "log-loss-rose",
         "below-absolute-min", "no-champion"],
)
def test_offline_gate(candidate, champion, decision, failing):
    verdict = evaluate_offline(candidate, THRESHOLDS, champion)
    assert verdict.decision == decision
    assert [c.name for c in verdict.checks if not c.passed] == failing


def test_report_lists_every_threshold_value_and_reason():
    verdict = evaluate_offline({"accuracy": 0.92, "log_loss": 0.2}, THRESHOLDS,
                               {"accuracy": 0.94, "log_loss": 0.22})
    report = verdict.to_markdown()
    assert "## Offline gate: **rollback**" in report
    assert "| accuracy.min | >= 0.9 | 0.92 | pass |" in report
    assert "| accuracy.change | worse by <= 0.01 (higher is better) | 0.02 | FAIL | worse by 0.02" \
        in report
    assert "better by 0.02 than the champion's 0.22" in report
    metrics = verdict.to_metrics()
    assert metrics["offline_gate.passed"] == 0.0
    assert metrics["offline_gate.accuracy.change.measured"] == pytest.approx(0.02)
    assert metrics["offline_gate.log_loss.change.passed"] == 1.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(GateError, match="unknown metric 'f1'; known metrics: accuracy, log_loss, "
                                        "auc, rmse"):
        gate.parse_thresholds({"f1": {"min": 0.5}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"accuracy": {"min": 0.9, "max": 0.8}}, "min 0.9 is above max 0.8"),
        ({"accuracy": {"minimum": 0.9}}, r"accuracy.minimum is not a threshold key"),
        ({"rmse": {"max_change": -1}}, "max_change must be >= 0"),
        ({"auc": {}}, "sets none of min, max, max_change"),
        ({"auc": {"min": "high"}}, "auc.min must be a number"),
    ],
    ids=["min-above-max", "unknown-key", "negative-change", "empty", "not-a-number"],
)
def test_contradicting_or_malformed_thresholds_are_refused(spec, message):
    with pytest.raises(GateError, match=message):
        gate.parse_thresholds(spec)


def test_threshold_on_an_unmeasured_metric_is_an_error():
    with pytest.raises(GateError, match="measured on accuracy"):
        evaluate_offline({"accuracy": 0.9}, [Threshold("auc", min=0.8)])


def test_metrics_on_held_out_data(iris_split):
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    X_train, X_test, y_train, y_test = iris_split
    good = LogisticRegression(max_iter=500).fit(X_train, y_train)
    stump = DecisionTreeClassifier(max_depth=1).fit(X_train, y_train)

    def measure(model):
        return compute_metrics("classification", y_test, model.predict(X_test),
                               model.predict_proba(X_test))

    champion, candidate = measure(good), measure(stump)
    assert set(champion) == {"accuracy", "log_loss", "auc"}
    assert champion["accuracy"] > 0.9 and candidate["accuracy"] < 0.7
    verdict = evaluate_offline(candidate, {"accuracy": {"max_change": 0.02},
                                           "auc": {"max_change": 0.02}}, champion)
    assert verdict.decision == ROLLBACK
    assert evaluate_offline(champion, {"accuracy": {"max_change": 0.0}}, champion).passed


def test_regression_metric_and_task_mismatch():
    rmse = compute_metrics("regression", [1.0, 2.0], [1.0, 4.0])
    assert rmse == {"rmse": pytest.approx(2 ** 0.5)}
    with pytest.raises(GateError, match="metric 'accuracy' is for classification"):
        compute_metrics("regression", [1.0], [1.0], names=["accuracy"])
    with pytest.raises(GateError, match="needs class probabilities"):
        compute_metrics("classification", [1], [1], names=["auc"])


@pytest.fixture(scope="module")
def iris_split():
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    X, y = load_iris(return_X_y=True)
    return train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)


# -- live analysis -------------------------------------------------------------------------------

CRITERIA = LiveCriteria(window_requests=500, window_seconds=300, max_error_rate=0.01,
                        max_p99_ratio=1.5, min_agreement=0.95)


@pytest.mark.parametrize(
    ("window", "decision", "reason"),
    [
        (LiveWindow(300, 500, 2, 12.0, 10.0, 500, 490), PROMOTE, "all 3 checks passed"),
        (LiveWindow(20, 120, 0, 11.0, 10.0, 120, 120), WAIT, "120 of 500 requests"),
        # 6 errors already: more than 1 % of the 500-request window, whatever comes next.
        (LiveWindow(5, 40, 6, 11.0, 10.0, 40, 40), ROLLBACK, "6 errors already exceed the 5"),
        (LiveWindow(300, 500, 0, 30.0, 10.0, 500, 500), ROLLBACK, "p99_ratio: canary p99 30 ms"),
        (LiveWindow(300, 500, 0, 10.0, 10.0, 500, 400), ROLLBACK,
         "agreement: 400 of 500 mirrored"),
        (LiveWindow(301, 200, 0, 10.0, 10.0, 200, 200), ROLLBACK, "only 200 of 500 requests"),
        (LiveWindow(100, 500, 0, 10.0, 10.0, 0, 0), ROLLBACK, "no mirrored requests were compared"),
    ],
    ids=["healthy", "window-open", "errors-fail-fast", "slow", "disagrees", "timed-out",
         "nothing-mirrored"],
)
def test_live_decision(window, decision, reason):
    verdict = decide_live(window, CRITERIA)
    assert verdict.decision == decision
    assert reason in verdict.reason


def test_live_report_shows_each_measured_value():
    verdict = decide_live(LiveWindow(300, 500, 5, 12.0, 10.0, 500, 490), CRITERIA)
    assert verdict.decision == PROMOTE  # exactly 1 %: the threshold is inclusive
    assert "| error_rate | <= 0.01 | 0.01 | pass | 5 errors in 500 requests |" \
        in verdict.to_markdown()
    assert verdict.to_metrics()["live_analysis.p99_ratio.measured"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_requests": 0}, "window_requests must be an int >= 1"),
        ({"max_error_rate": 1.5}, r"max_error_rate must be in \[0, 1\]"),
        ({"min_agreement": -0.1}, r"min_agreement must be in \[0, 1\]"),
    ],
)
def test_live_criteria_are_validated(kwargs, message):
    with pytest.raises(GateError, match=message):
        LiveCriteria(**kwargs)


def test_impossible_window_counts_are_refused():
    with pytest.raises(GateError, match="canary_errors"):
        LiveWindow(1, 10, 11)


def test_p99_nearest_rank():
    assert gate.p99([]) is None
    assert gate.p99([float(i) for i in range(1, 101)]) == 99.0
    assert gate.p99([5.0]) == 5.0
