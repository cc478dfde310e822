"""Retrying, in one place, on tenacity: bounded retries of one call, and loops kept alive.

Two shapes:

- `retry_call`: one call tried up to N times, only on the failures `retry` accepts, with a jittered
  exponential wait between tries (the RPC reads, a fresh challenge for the sbatch service); the last
  failure is raised as itself.
- `KeepAlive`: a component's loop that must outlive any failure (the log follower, its WebSocket
  hint, the transaction sender, the daemon waiting for the chain or Slurm). Each failure is handed
  to `on_failure` (which logs it and records it in a health field, as the component wants), then
  the loop waits `Backoff.delay` (doubling, capped) through the component's own `sleep`, which its
  wake-up or stop event may cut short; a success starts the doubling again from the first delay.

`asyncio.CancelledError` (and any other BaseException that is not an Exception) is never retried
nor swallowed: it goes through at once. A failure that comes after `stopped()` turned true ends the
loop quietly: it is most likely the stop itself (a closed connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Failure:
    """One failed try, as `on_failure` / `on_retry` see it."""

    error: Exception
    attempt: int  # failures in a row: 1 for the first of an outage (to log an outage once)
    retry_in_s: float  # the wait before the next try (before jitter)


@dataclass(frozen=True)
class Backoff:
    """Waits of `initial_s`, doubling after each failure in a row, never above `max_s`.

    With `jitter` (a fraction in [0, 1]) each actual wait is drawn between `(1 - jitter)` times the
    delay and the delay itself; `Failure.retry_in_s` is the delay without jitter.
    """

    initial_s: float
    max_s: float
    jitter: float = 0.0

    def delay(self, failures: int) -> float:
        """The wait after `failures` (>= 1) failures in a row."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(failures, 1) - 1, 64))

    def jittered(self, delay: float) -> float:
        return delay * (1.0 - self.jitter * random.random()) if self.jitter else delay


def sleep_or_wake(event: asyncio.Event) -> Sleep:
    """A sleep that `event` cuts short (a stop event: it is not cleared)."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    return sleep


def _failure(state: RetryCallState, attempt: int) -> Failure:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    assert isinstance(error, Exception)  # only Exceptions are retried
    return Failure(error, attempt, float(state.upcoming_sleep))


async def retry_call(
    call: Callable[[], Awaitable[T]],
    *,
    retry: Callable[[Exception], bool],
    attempts: int,
    initial_s: float = 0.1,
    max_s: float = 2.0,
    jitter_s: float = 0.1,
    on_retry: Callable[[Failure], None] | None = None,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """`call()`, tried up to `attempts` times while it fails with an error `retry` accepts.

    Between tries: `initial_s * 2**(n-1)` plus up to `jitter_s` at random, at most `max_s`;
    `on_retry` is told of each failure before that wait. The last failure (or any failure `retry`
    refuses) is raised as it is.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(_failure(state, state.attempt_number))

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and retry(exc)),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=jitter_s),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )

    async def attempt() -> T:  # tenacity awaits only coroutine functions: `call` may be a lambda
        return await call()

    return await retrying(attempt)


_STOPPED: Final = object()


class KeepAlive:
    """Runs a component's rounds until `stopped()`, through any failure. See the module doc.

    `sleep` is the component's own interruptible wait (by default a plain `asyncio.sleep`: then
    only a cancellation cuts a wait short). `on_recovery` is called when a call succeeds after
    failures. `reset()`, called from inside a round that made progress (a connection opened), makes
    the next failure wait the first delay again although the round has not returned.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        on_failure: Callable[[Failure], None],
        stopped: Callable[[], bool],
        sleep: Sleep = asyncio.sleep,
        on_recovery: Callable[[], None] | None = None,
    ) -> None:
        self.backoff = backoff
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        self._stopped = stopped
        self._sleep = sleep
        self._failures = 0  # in a row, since the last success or reset()

    @property
    def failures(self) -> int:
        return self._failures

    def reset(self) -> None:
        self._failures = 0

    async def until_ok(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call()`'s result once it succeeds; None when stopped first (before or after a failure)."""
        self._failures = 0

        async def attempt() -> Any:
            if self._stopped():
                return _STOPPED
            try:
                result = await call()
            except Exception:
                if self._stopped():
                    return _STOPPED
                self._failures += 1
                raise
            if self._failures and self._on_recovery is not None:
                self._on_recovery()
            self._failures = 0
            return result

        async def sleep(seconds: float) -> None:
            await self._sleep(self.backoff.jittered(seconds))

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, Exception)),
            stop=stop_never,
            wait=lambda _state: self.backoff.delay(self._failures),
            before_sleep=lambda state: self._on_failure(_failure(state, self._failures)),
            sleep=sleep,
            reraise=True,
        )
        result: Any = await retrying(attempt)
        return None if result is _STOPPED else cast(T, result)

    async def forever(self, round_: Callable[[], Awaitable[object]]) -> None:
        """Run `round_()` again and again until `stopped()`: the delay starts over after each success."""
        while not self._stopped():
            await self.until_ok(round_)
