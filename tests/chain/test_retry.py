"""The retry helper: bounded retries of one call, and loops kept alive (waits recorded, never slept)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from supervisor.retry import Backoff, Failure, KeepAlive, retry_call, sleep_or_wake


class Transient(Exception):
    pass


class Verdict(Exception):
    pass


class Recorder:
    """A sleep hook that records the waits asked for and only yields to the loop."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


class Script:
    """A call that raises the queued errors in turn, then returns its call count."""

    def __init__(self, *outcomes: BaseException | None, then: Callable[[], None] | None = None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.then = then

    async def __call__(self) -> int:
        self.calls += 1
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is not None:
                raise outcome
        elif self.then is not None:
            self.then()
        return self.calls


def transient(exc: Exception) -> bool:
    return isinstance(exc, Transient)


# -- Backoff --------------------------------------------------------------------------------------


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.delay(n) for n in range(1, 7)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert backoff.delay(0) == pytest.approx(0.2)
    assert backoff.delay(10_000) == 1.0  # no overflow after a long outage


def test_jitter_draws_between_the_fraction_and_the_whole_delay() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.5)
    draws = [backoff.jittered(4.0) for _ in range(500)]
    assert all(2.0 <= d <= 4.0 for d in draws) and max(draws) - min(draws) > 1.0
    assert Backoff(1.0, 8.0).jittered(4.0) == 4.0


# -- retry_call -------------------------------------------------------------------------------------


async def test_retry_call_retries_transient_failures_then_returns() -> None:
    sleep, failures = Recorder(), list[Failure]()
    call = Script(Transient("a"), Transient("b"))
    result = await retry_call(
        call,
        retry=transient,
        attempts=4,
        initial_s=0.1,
        max_s=2.0,
        jitter_s=0.0,
        on_retry=failures.append,
        sleep=sleep,
    )
    assert result == 3
    assert sleep.waits == pytest.approx([0.1, 0.2])
    assert [(f.attempt, str(f.error)) for f in failures] == [(1, "a"), (2, "b")]
    assert [f.retry_in_s for f in failures] == pytest.approx([0.1, 0.2])


async def test_retry_call_raises_the_last_failure_after_its_attempts() -> None:
    sleep = Recorder()
    call = Script(*(Transient(str(n)) for n in range(10)))
    with pytest.raises(Transient, match=r"^2$"):
        await retry_call(call, retry=transient, attempts=3, max_s=0.25, jitter_s=0.0, sleep=sleep)
    assert call.calls == 3 and sleep.waits == pytest.approx([0.1, 0.2])


async def test_retry_call_wait_is_jittered_and_capped() -> None:
    sleep = Recorder()
    call = Script(*(Transient() for _ in range(6)))
    await retry_call(call, retry=transient, attempts=7, initial_s=0.1, max_s=0.5, jitter_s=0.1, sleep=sleep)
    for wait, base in zip(sleep.waits, [0.1, 0.2, 0.4, 0.5, 0.5, 0.5], strict=True):
        assert min(base, 0.5) <= wait <= min(base + 0.1, 0.5)


async def test_retry_call_does_not_retry_a_verdict() -> None:
    sleep = Recorder()
    call = Script(Verdict("reverted"))
    with pytest.raises(Verdict):
        await retry_call(call, retry=transient, attempts=5, sleep=sleep)
    assert call.calls == 1 and sleep.waits == []


async def test_retry_call_lets_a_cancellation_through_even_if_retry_says_yes() -> None:
    call = Script(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await retry_call(call, retry=lambda exc: True, attempts=5, sleep=Recorder())
    assert call.calls == 1


async def test_retry_call_awaits_what_a_plain_lambda_returns() -> None:
    call = Script(Transient())
    assert await retry_call(lambda: call(), retry=transient, attempts=2, sleep=Recorder()) == 2


# -- KeepAlive --------------------------------------------------------------------------------------


def keep_alive(
    backoff: Backoff,
    sleep: Recorder,
    failures: list[Failure],
    stop: list[bool],
    on_recovery: Callable[[], None] | None = None,
) -> KeepAlive:
    """A KeepAlive that records its waits and failures and stops once `stop` is not empty."""
    return KeepAlive(
        backoff, on_failure=failures.append, stopped=lambda: bool(stop), sleep=sleep, on_recovery=on_recovery
    )


async def test_until_ok_backs_off_until_a_success_and_says_when_it_recovered() -> None:
    sleep, failures, recovered = Recorder(), list[Failure](), list[bool]()
    keeper = keep_alive(Backoff(0.5, 2.0), sleep, failures, [], on_recovery=lambda: recovered.append(True))
    call = Script(*(Transient(str(n)) for n in range(5)))
    assert await keeper.until_ok(call) == 6
    assert sleep.waits == pytest.approx([0.5, 1.0, 2.0, 2.0, 2.0])
    assert [f.attempt for f in failures] == [1, 2, 3, 4, 5]  # attempt 1: the outage's first failure
    assert [f.retry_in_s for f in failures] == sleep.waits
    assert recovered == [True] and keeper.failures == 0


async def test_until_ok_on_a_first_success_neither_waits_nor_recovers() -> None:
    sleep, recovered = Recorder(), list[bool]()
    keeper = keep_alive(Backoff(0.5, 2.0), sleep, [], [], on_recovery=lambda: recovered.append(True))
    assert await keeper.until_ok(Script()) == 1
    assert sleep.waits == [] and recovered == []


async def test_until_ok_retries_any_exception_whatever_its_kind() -> None:
    sleep = Recorder()
    keeper = keep_alive(Backoff(0.1, 1.0), sleep, [], [])
    assert await keeper.until_ok(Script(Verdict(), KeyError("k"), ValueError())) == 4


async def test_forever_starts_the_delay_over_after_each_success() -> None:
    sleep, failures, stop = Recorder(), list[Failure](), list[bool]()
    outcomes: list[BaseException | None] = [Transient(), Transient(), None, Transient(), Transient(), None]
    call = Script(*outcomes, then=lambda: stop.append(True))
    await keep_alive(Backoff(0.2, 30.0), sleep, failures, stop).forever(call)
    assert sleep.waits == pytest.approx([0.2, 0.4, 0.2, 0.4])
    assert [f.attempt for f in failures] == [1, 2, 1, 2]
    assert call.calls == 7  # the round after the last success stopped the loop


async def test_reset_inside_a_round_makes_the_next_failure_wait_the_first_delay() -> None:
    sleep, stop = Recorder(), list[bool]()
    keeper = keep_alive(Backoff(1.0, 60.0), sleep, [], stop)
    rounds = 0

    async def session() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 6:
            stop.append(True)
        if rounds in (3, 4):
            keeper.reset()  # connected, then dropped: a round that never returns normally
        raise ConnectionError("closed")

    await keeper.forever(session)
    assert sleep.waits == pytest.approx([1.0, 2.0, 1.0, 1.0, 2.0])


async def test_jittered_sleep_but_nominal_retry_in_s() -> None:
    sleep, failures, stop = Recorder(), list[Failure](), list[bool]()
    call = Script(*(Transient() for _ in range(4)), then=lambda: stop.append(True))
    await keep_alive(Backoff(1.0, 4.0, jitter=0.5), sleep, failures, stop).forever(call)
    nominal = [f.retry_in_s for f in failures]
    assert nominal == pytest.approx([1.0, 2.0, 4.0, 4.0])
    assert all(n / 2 <= w <= n for w, n in zip(sleep.waits, nominal, strict=True))


async def test_a_failure_after_stop_ends_quietly_and_nothing_runs_once_stopped() -> None:
    sleep, failures, stop = Recorder(), list[Failure](), list[bool]()

    async def closing() -> int:
        stop.append(True)
        raise ConnectionError("closed by the stop")

    keeper = keep_alive(Backoff(0.1, 1.0), sleep, failures, stop)
    assert await keeper.until_ok(closing) is None
    assert failures == [] and sleep.waits == []
    never = Script()
    await keeper.forever(never)
    assert await keeper.until_ok(never) is None and never.calls == 0


async def test_a_stop_during_the_wait_ends_the_loop_before_another_round() -> None:
    failures, stop = list[Failure](), list[bool]()

    async def sleep(seconds: float) -> None:
        stop.append(True)  # the stop event cut the wait short

    call = Script(*(Transient() for _ in range(10)))
    keeper = KeepAlive(Backoff(5.0, 5.0), on_failure=failures.append, stopped=lambda: bool(stop), sleep=sleep)
    await keeper.forever(call)
    assert call.calls == 1 and len(failures) == 1


async def test_a_cancelled_round_is_not_retried() -> None:
    sleep, failures = Recorder(), list[Failure]()
    call = Script(Transient(), asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await keep_alive(Backoff(0.1, 1.0), sleep, failures, []).forever(call)
    assert call.calls == 2 and len(failures) == 1


async def test_cancelling_the_task_during_a_wait_cancels_it() -> None:
    failures = list[Failure]()
    keeper = KeepAlive(Backoff(30.0, 30.0), on_failure=failures.append, stopped=lambda: False)
    running = asyncio.create_task(keeper.forever(Script(Transient())))
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert failures, "the first failure was not reported"
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)


async def test_a_failing_on_failure_hook_is_not_swallowed() -> None:
    def broken(failure: Failure) -> None:
        raise RuntimeError("hook")

    keeper = KeepAlive(Backoff(0.1, 1.0), on_failure=broken, stopped=lambda: False, sleep=Recorder())
    with pytest.raises(RuntimeError, match="hook"):
        await keeper.until_ok(Script(Transient()))


# -- sleep_or_wake ----------------------------------------------------------------------------------


async def test_sleep_or_wake_is_cut_short_by_its_event() -> None:
    event = asyncio.Event()
    sleep = sleep_or_wake(event)
    started = time.monotonic()
    await sleep(0.01)  # times out quietly
    asyncio.get_running_loop().call_later(0.01, event.set)
    await asyncio.wait_for(sleep(60.0), 5)
    assert time.monotonic() - started < 5 and event.is_set()  # a stop event stays set
    await asyncio.wait_for(sleep(60.0), 1)  # and cuts every later wait at once
