"""kfp_serve.serving.smoke.check_predictions with an injected predict function and a fake clock."""

import pytest

from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.smoke import (
    BLESSED,
    ERROR,
    MISMATCH,
    TIMEOUT,
    check_predictions,
    percentile,
    predictions_match,
)


class FakeClock:
    """A clock that advances only when the code sleeps or a request is made."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class HTTPFailure(ServingError):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def run(predict, instances, expected, **kwargs):
    clock = FakeClock()
    return check_predictions(predict, instances, expected, clock=clock, sleep=clock.sleep,
                             **kwargs)


def test_all_labels_match_is_blessed():
    result = run(lambda rows: [int(rows[0][0])], [[0], [1], [2]], [0, 1, 2])
    assert result.verdict == BLESSED and result.blessed
    assert result.n_matched == result.n_requests == 3 and result.attempts == 3
    assert "✅" in result.to_markdown()
    assert result.metrics()["blessed"] == 1.0


def test_mismatch_lists_the_differences():
    result = run(lambda rows: [7], [[0], [1]], [0, 7])
    assert result.verdict == MISMATCH and not result.blessed
    assert result.mismatches == [{"index": 0, "expected": 0, "got": 7}]
    assert "1 of 2 predictions differ" in result.message
    assert "## Mismatches" in result.to_markdown()


def test_retries_until_the_endpoint_answers():
    calls = []

    def flaky(rows):
        calls.append(rows)
        if len(calls) < 4:
            raise HTTPFailure(404)  # kserve/kserve#1658: Ready, then 404 for a moment
        return [1]

    result = run(flaky, [[1]], [1], retry_interval_s=0.5)
    assert result.verdict == BLESSED and result.attempts == 4


def test_connection_errors_time_out_at_the_deadline():
    def down(rows):
        raise ConnectionError("connection refused")

    result = run(down, [[1]], [1], deadline_s=3.0, retry_interval_s=0.5)
    assert result.verdict == TIMEOUT
    assert "within 3 s" in result.message and "connection refused" in result.message
    assert result.elapsed_s <= 3.0


def test_client_errors_are_not_retried():
    def bad_request(rows):
        raise HTTPFailure(400)

    result = run(bad_request, [[1]], [1], deadline_s=60)
    assert result.verdict == ERROR and result.attempts == 1


@pytest.mark.parametrize(
    ("expected", "got", "output", "matches"),
    [
        pytest.param(1, 1, "label", True, id="label-equal"),
        pytest.param(1, 1.0, "label", True, id="label-int-float"),
        pytest.param("setosa", "setosa", "label", True, id="label-string"),
        pytest.param(1, 2, "label", False, id="label-differs"),
        pytest.param([0.1, 0.9], [0.1000001, 0.8999999], "value", True, id="values-close"),
        pytest.param([0.1, 0.9], [0.2, 0.8], "value", False, id="values-far"),
        pytest.param([0.1, 0.9], [0.1], "value", False, id="values-shape"),
        pytest.param(0.5, [0.5], "value", False, id="scalar-vs-list"),
    ],
)
def test_predictions_match(expected, got, output, matches):
    assert predictions_match(expected, got, output, tolerance=1e-6) is matches


def test_probability_answers_match_expected_values():
    # A runtime answering probabilities (stock xgbserver) is compared with expected_values.
    probabilities = [[0.2, 0.8], [0.9, 0.1]]
    multi = run(lambda rows: [probabilities[int(rows[0][0])]], [[0], [1]], [1, 0],
                expected_values=probabilities)
    assert multi.verdict == BLESSED
    binary = run(lambda rows: [probabilities[int(rows[0][0])][1]], [[0], [1]], [1, 0],
                 expected_values=probabilities)
    assert binary.verdict == BLESSED


def test_percentile_is_nearest_rank():
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99.0
