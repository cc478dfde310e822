"""Job statuses and the transition rule of the protocol (PROTOCOL.md section 2), mirrored from Tools.sol."""

from __future__ import annotations

from enum import IntEnum


class JobStatus(IntEnum):
    PENDING = 0
    META_SCHEDULED = 1
    SCHEDULED = 2
    RUNNING = 3
    CANCELLED = 4
    FINISHED = 5
    FAILED = 6
    OUT_OF_CREDITS = 7
    PANICKED = 8

    @property
    def is_hot(self) -> bool:
        """Hot jobs can still change; cold ones are terminal and settled."""
        return self <= JobStatus.RUNNING

    @property
    def is_cold(self) -> bool:
        return not self.is_hot


_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.META_SCHEDULED, JobStatus.CANCELLED}),
    JobStatus.META_SCHEDULED: frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.CANCELLED}),
    JobStatus.SCHEDULED: frozenset(
        {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.OUT_OF_CREDITS}
    ),
}


class TransitionError(ValueError):
    """A refused transition, named as the contract's custom error would name it."""

    def __init__(self, error: str, *args: int) -> None:
        self.error = error
        self.args_ = args
        super().__init__(f"{error}({', '.join(str(a) for a in args)})")


def check_transition(current: JobStatus, nxt: JobStatus) -> None:
    """Raise TransitionError exactly as the contract reverts, with the same precedence."""
    if current == nxt:
        raise TransitionError("SameStatusError")
    if current.is_cold:
        raise TransitionError("JobHotStatusOnly", int(current))
    if nxt == JobStatus.PANICKED:
        return
    if nxt not in _ALLOWED[current]:
        raise TransitionError("InvalidTransition", int(current), int(nxt))


def is_allowed(current: JobStatus, nxt: JobStatus) -> bool:
    try:
        check_transition(current, nxt)
    except TransitionError:
        return False
    return True
