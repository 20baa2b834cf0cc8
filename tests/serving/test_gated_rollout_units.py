"""The gated rollout's pure steps: the gate file, the offline gate on fitted models, the report;
and the mirror's answer comparison and bounded queue."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from kfp_serve.serving import gate
from kfp_serve.serving.backends.local import mirror
from kfp_serve.serving.gate import GateError
from kfp_serve.serving.gated_rollout import (
    PROMOTED,
    REJECTED,
    RolloutReport,
    load_gate,
    offline_gate,
)

GATE_YAML = """\
task: classification
offline:
  accuracy: {min: 0.9, max_change: 0.01}
  log_loss: {max: 0.5}
canary: 25
live: {window_requests: 300, window_seconds: 60, min_agreement: 0.9}
alias: prod
"""


def test_a_gate_file_is_read_with_every_setting(tmp_path: Any) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(GATE_YAML)
    policy = load_gate(path)
    assert [t.metric for t in policy.thresholds] == ["accuracy", "log_loss"]
    assert policy.thresholds[0].min == 0.9 and policy.thresholds[0].max_change == 0.01
    assert policy.canary == 25 and policy.alias == "prod"
    assert policy.live.window_requests == 300 and policy.live.min_agreement == 0.9
    assert policy.live.max_p99_ratio == gate.LiveCriteria().max_p99_ratio  # default kept
    assert load_gate(str(path)) == policy  # a path string reads the file too
    assert load_gate(json.dumps({"offline": {"accuracy": {"min": 0.9}}})).canary == 20


@pytest.mark.parametrize(
    ("gate_spec", "words"),
    [
        ({"offline": {"acuracy": {"min": 0.9}}}, ["'acuracy'", "accuracy, log_loss, auc, rmse"]),
        ({"offline": {"accuracy": {"min": 0.9, "max": 0.8}}}, ["min 0.9 is above max 0.8"]),
        ({"offline": {"accuracy": {"minimum": 0.9}}}, ["accuracy.minimum", "min, max, max_change"]),
        ({"offline": {"rmse": {"max": 1}}}, ["regression metric", "accuracy, log_loss, auc"]),
        ({"offline": {"accuracy": {"min": 0.9}}, "canary": 100}, ["canary", "1 to 99"]),
        ({"offline": {"accuracy": {"min": 0.9}}, "live": {"window": 5}},
         ["live.window ", "window_requests"]),
        ({"offline": {"accuracy": {"min": 0.9}}, "live": {"min_agreement": 2}}, ["min_agreement"]),
        ({"offline": {"accuracy": {"min": 0.9}}, "canaryy": 5}, ["'canaryy'", "offline, canary"]),
        ({"live": {}}, ["no 'offline'"]),
    ],
    ids=["unknown-metric", "min-above-max", "unknown-bound", "metric-of-other-task",
         "canary-100", "unknown-live-key", "agreement-above-1", "unknown-key", "no-offline"],
)
def test_a_bad_gate_is_refused_naming_the_field_and_the_fix(
    gate_spec: dict, words: list[str]
) -> None:
    with pytest.raises(GateError) as info:
        load_gate(gate_spec)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_missing_gate_file_says_which(tmp_path: Any) -> None:
    with pytest.raises(GateError, match="cannot read gate file .*nope.yaml"):
        load_gate(tmp_path / "nope.yaml")


@pytest.fixture(scope="module")
def iris_split() -> tuple[Any, Any, Any, Any]:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def test_the_offline_gate_rejects_a_candidate_worse_than_the_champion(iris_split: Any) -> None:
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = iris_split
    champion = LogisticRegression(max_iter=500).fit(x_train, y_train)
    worse = DummyClassifier(strategy="most_frequent").fit(x_train, y_train)
    policy = load_gate({"offline": {"accuracy": {"min": 0.5, "max_change": 0.02},
                                    "log_loss": {"max": 0.6}}})
    verdict, cand, champ = offline_gate(policy, worse, champion, x_test, y_test)
    assert verdict.decision == gate.ROLLBACK
    assert cand["accuracy"] == pytest.approx(1 / 3) and champ["accuracy"] == pytest.approx(1.0)
    failed = {c.name for c in verdict.checks if not c.passed}
    assert failed == {"accuracy.min", "accuracy.change", "log_loss.max"}

    verdict, _, _ = offline_gate(policy, champion, worse, x_test, y_test)
    assert verdict.passed  # the other way round it is better on every check


def test_the_report_shows_every_threshold_measured_value_and_reason(iris_split: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = iris_split
    model = LogisticRegression(max_iter=500).fit(x_train, y_train)
    policy = load_gate({"offline": {"accuracy": {"min": 0.99}}})
    offline, cand, _ = offline_gate(policy, model, None, x_test, y_test)
    live = gate.decide_live(
        gate.LiveWindow(elapsed_seconds=3, canary_requests=500, canary_errors=1,
                        canary_p99_ms=4.0, stable_p99_ms=3.0, mirrored=400, agreed=396),
        policy.live,
    )
    report = RolloutReport("iris", "iris:2.0.0", "iris:1.0.0", PROMOTED, offline, live,
                           alias_moved=True, candidate_metrics=cand, decision_seconds=3.2)
    text = report.to_markdown()
    assert "**promoted**" in text and "`champion` moved to iris:2.0.0" in text
    for check in [*offline.checks, *live.checks]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {check.name} |"))
        assert check.threshold in row and check.reason in row
    metrics = report.to_metrics()
    assert metrics["rollout.promoted"] == 1.0 and metrics["rollout.decision_seconds"] == 3.2
    assert metrics["live_analysis.agreement.measured"] == pytest.approx(0.99)
    assert metrics["candidate.accuracy"] == cand["accuracy"]
    assert all(isinstance(v, float) for v in metrics.values())

    rejected = RolloutReport("iris", "iris:2.0.0", "iris:1.0.0", REJECTED, offline)
    assert "`champion` unchanged (iris:1.0.0)" in rejected.to_markdown()
    assert rejected.to_metrics()["rollout.promoted"] == 0.0


# -- the mirror ---------------------------------------------------------------------------------


def _answer(payload: dict, chunked: bool = False) -> bytes:
    body = json.dumps(payload).encode()
    if chunked:
        half = len(body) // 2
        framed = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half,
                                                         body[half:])
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_is_split_into_status_and_body(chunked: bool) -> None:
    status, body = mirror.split_answer(_answer({"predictions": [1, 2]}, chunked))
    assert status == 200 and json.loads(body) == {"predictions": [1, 2]}
    assert mirror.split_answer(b"garbage") == (None, b"")


@pytest.mark.parametrize(
    ("stable", "candidate", "same"),
    [
        ([0, 1, 2], [0, 1, 2], True),
        ([0, 1, 2], [0, 1, 1], False),
        ([[0.1, 0.9], [0.8, 0.2]], [[0.3, 0.7], [0.6, 0.4]], True),  # same most likely class
        ([[0.1, 0.9]], [[0.9, 0.1]], False),
        ([1.0], [1.0000000001], True),
        (["setosa"], ["virginica"], False),
        ([0, 1], [0], False),
    ],
    ids=["labels", "a-label-differs", "probabilities-argmax", "argmax-differs", "float-tolerance",
         "strings", "row-count"],
)
def test_agreement_compares_predicted_classes(stable: list, candidate: list, same: bool) -> None:
    assert mirror.agree(stable, candidate) is same


class _Upstream:
    revision = 2
    timeout = 30.0


def test_the_mirror_queue_is_bounded_and_drops_and_counts_what_does_not_fit(tmp_path: Any) -> None:
    """A candidate that never answers: at most MAX_INFLIGHT on the wire, QUEUE_SIZE waiting,
    the rest dropped and counted; answers that come later are compared."""
    sent: list[Any] = []

    def send(upstream: Any, request: bytes, done: Any) -> Any:
        sent.append(done)
        return lambda: None

    path = tmp_path / mirror.MIRROR_FILE
    m = mirror.Mirror(path, send, clock=iter(np.arange(0, 1e6, 0.001)).__next__,
                      call_later=lambda delay, cb: type("T", (), {"cancel": lambda self: None})())
    mirror.open_session(tmp_path, stable=1, candidate=2)

    class Stable:
        revision = 1

    candidate = _Upstream()
    m.refresh([Stable(), candidate])
    assert m.active
    stable_answer = _answer({"predictions": [0]})
    total = mirror.MAX_INFLIGHT + mirror.QUEUE_SIZE + 5
    for _ in range(total):
        exchange = type("E", (), {"upstream": Stable(), "request": b"POST / HTTP/1.1\r\n\r\n",
                                  "capture": None, "status": 200, "started": 0.0})()
        m.begin(exchange)
        exchange.capture = [stable_answer]
        m.answered(exchange)
    status = m.status()
    assert len(sent) == mirror.MAX_INFLIGHT
    assert status["queued"] == mirror.QUEUE_SIZE and status["dropped"] == 5
    assert status["revisions"]["stable"]["requests"] == total
    sent[0](_answer({"predictions": [0]}))  # agrees; frees a slot for a queued one
    sent[1](_answer({"predictions": [2]}))  # disagrees
    sent[2](b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
    status = m.status()
    assert status["window"]["mirrored"] == 2 and status["window"]["agreed"] == 1
    assert status["revisions"]["mirrored"]["errors"] == 1
    assert status["window"]["canary_errors"] == 1
    assert len(sent) == mirror.MAX_INFLIGHT + 3 and status["queued"] == mirror.QUEUE_SIZE - 3

    mirror.close_session(tmp_path)
    m.refresh([Stable(), candidate])
    assert not m.active and m.status() == {"session": None, "active": False}


def test_an_error_inside_the_mirror_turns_it_off_and_never_reaches_the_request(
    tmp_path: Any,
) -> None:
    def send(upstream: Any, request: bytes, done: Any) -> Any:
        raise OSError("no more file descriptors")

    m = mirror.Mirror(tmp_path / mirror.MIRROR_FILE, send, clock=lambda: 1.0,
                      call_later=lambda delay, cb: None)
    mirror.open_session(tmp_path, stable=1, candidate=2)
    stable, candidate = type("S", (), {"revision": 1})(), _Upstream()
    m.refresh([stable, candidate])
    exchange = type("E", (), {"upstream": stable, "request": b"x", "capture": None,
                              "status": 200, "started": 0.0})()
    m.begin(exchange)
    exchange.capture.append(_answer({"predictions": [0]}))
    m.answered(exchange)  # the failing send is contained here
    assert not m.active and "no more file descriptors" in m.status()["failure"]
    m.refresh([stable, candidate])
    assert not m.active  # stays off for the rest of the session
