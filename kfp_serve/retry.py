"""kfp-serve's one retry policy, on tenacity: every "try again until it works or a deadline
passes" in the project goes through here, so attempts, back-off and the final error read the same
everywhere.

Use it as a loop over attempts::

    for attempt in retrying(deadline=10.0, on=ConnectionError):
        with attempt:
            connect()

or wait for a condition with :func:`wait_until`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")

#: First pause between attempts, and the longest one (the pause doubles in between).
FIRST_WAIT = 0.02
MAX_WAIT = 0.5


def retrying(
    *,
    deadline: float | None = None,
    attempts: int | None = None,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    first_wait: float = FIRST_WAIT,
    max_wait: float = MAX_WAIT,
    jitter: float = 0.0,
    before_sleep: Callable[[BaseException, float], None] | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """Attempts of one operation: retried on ``on`` with exponential back-off until ``deadline``
    seconds have passed or ``attempts`` were made; then the last error is raised as it was.

    Args:
        deadline: Seconds from the first attempt after which no new attempt starts (nor does
            a pause that would end after it: the last error is raised then instead).
        attempts: Most attempts in all (None: no limit but the deadline).
        on: The exception types that mean "try again"; any other is raised at once.
        first_wait: Pause after the first failure, in seconds.
        max_wait: Longest pause between two attempts.
        jitter: Each pause is lengthened by a random part of up to this fraction of it, so
            clients that failed together do not all come back at the same moment.
        before_sleep: Called with the error and the pause (seconds) before each pause, to say
            what is retried.
        clock: A monotonic clock to measure ``deadline`` with, from this call on (with
            ``sleep``, injectable so that tests of a caller need not wait); default: the
            system's, from the first attempt.
        sleep: How to pause.
    """
    if deadline is None and attempts is None:
        raise ValueError("retrying() needs a deadline or a number of attempts")
    stops = []
    if deadline is not None and clock is not None:
        began, limit = clock(), deadline

        def out_of_time(state: tenacity.RetryCallState) -> bool:
            return clock() - began + (state.upcoming_sleep or 0.0) > limit

        stops.append(out_of_time)
    elif deadline is not None:
        stops.append(tenacity.stop_before_delay(deadline))
    if attempts is not None:
        stops.append(tenacity.stop_after_attempt(attempts))
    backoff = tenacity.wait_exponential(multiplier=first_wait, max=max_wait)

    def wait(state: tenacity.RetryCallState) -> float:
        return backoff(state) * (1 + random.random() * jitter)  # noqa: S311 - not crypto

    def say(state: tenacity.RetryCallState) -> None:
        assert before_sleep is not None and state.outcome is not None
        error = state.outcome.exception()
        assert error is not None  # only failed attempts are followed by a pause
        before_sleep(error, state.upcoming_sleep)

    return tenacity.Retrying(
        stop=tenacity.stop_any(*stops),
        wait=wait if jitter else backoff,
        retry=tenacity.retry_if_exception_type(on),
        before_sleep=say if before_sleep is not None else None,
        sleep=sleep,
        reraise=True,
    )


def retrying_async(
    *,
    deadline: float | None = None,
    attempts: int | None = None,
    on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    first_wait: float = FIRST_WAIT,
    max_wait: float = MAX_WAIT,
) -> tenacity.AsyncRetrying:
    """:func:`retrying` for coroutines (``async for attempt in retrying_async(...)``): the
    same stops and back-off, pausing with ``asyncio.sleep`` so the event loop keeps serving."""
    sync = retrying(
        deadline=deadline, attempts=attempts, on=on, first_wait=first_wait, max_wait=max_wait
    )
    return tenacity.AsyncRetrying(stop=sync.stop, wait=sync.wait, retry=sync.retry, reraise=True)


def wait_until(
    condition: Callable[[], T | None],
    *,
    deadline: float,
    interval: float = 0.05,
    max_interval: float | None = None,
    describe: str = "the condition",
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    It is called every ``interval`` seconds, or, with ``max_interval``, after pauses that
    double from ``interval`` up to ``max_interval`` (for a condition that is costly to check).

    Raises:
        TimeoutError: ``deadline`` seconds passed first; the message names ``describe``.
    """

    class _NotYet(Exception):
        pass

    def check() -> T:
        value = condition()
        if not value:
            raise _NotYet
        return value

    try:
        return tenacity.Retrying(
            stop=tenacity.stop_after_delay(deadline),
            wait=(
                tenacity.wait_fixed(interval)
                if max_interval is None
                else tenacity.wait_exponential(multiplier=interval, max=max_interval)
            ),
            retry=tenacity.retry_if_exception_type(_NotYet),
            reraise=True,
        )(check)
    except _NotYet:
        raise TimeoutError(f"{describe} did not happen within {deadline:g} s") from None
