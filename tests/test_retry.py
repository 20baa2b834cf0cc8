"""kfp_serve.retry: the one retry policy (attempt counts and pauses, not timings)."""

from __future__ import annotations

import time

import pytest

from kfp_serve.retry import retrying, wait_until


class Flaky(Exception):
    pass


def test_a_pause_that_would_end_after_the_deadline_is_not_taken() -> None:
    calls = []

    def once() -> None:
        calls.append(time.monotonic())
        raise Flaky("still down")

    started = time.monotonic()
    with pytest.raises(Flaky, match="still down"):  # the last error, as it was
        retrying(deadline=1.0, on=Flaky, first_wait=30.0, max_wait=30.0)(once)
    assert len(calls) == 1  # the 30 s pause would end past the 1 s deadline: no second attempt
    assert time.monotonic() - started < 10


def test_pauses_double_with_jitter_and_are_reported_before_each_one() -> None:
    seen: list[tuple[str, float]] = []

    def once() -> None:
        raise Flaky(f"attempt {len(seen) + 1}")

    with pytest.raises(Flaky, match="attempt 4"):
        retrying(
            attempts=4, on=Flaky, first_wait=0.001, max_wait=1.0, jitter=0.5,
            before_sleep=lambda error, pause: seen.append((str(error), pause)),
        )(once)
    assert [e for e, _ in seen] == ["attempt 1", "attempt 2", "attempt 3"]
    for (_, pause), base in zip(seen, (0.001, 0.002, 0.004), strict=True):
        assert base <= pause <= base * 1.5


def test_other_errors_are_raised_at_once() -> None:
    calls = []

    def once() -> None:
        calls.append(1)
        raise KeyError("not transient")

    with pytest.raises(KeyError):
        retrying(attempts=5, on=Flaky, first_wait=0)(once)
    assert calls == [1]


def test_wait_until_with_growing_pauses_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), deadline=30, interval=0.001, max_interval=0.004) == (
        "ready"
    )
    with pytest.raises(TimeoutError, match="the drain did not happen within 0.05 s"):
        wait_until(lambda: False, deadline=0.05, interval=0.01, max_interval=0.02,
                   describe="the drain")
