"""Slurm job states and exit codes mapped to chain statuses (PROTOCOL.md section 9). Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from grid_protocol.jobs import JobStatus

# Waiting for resources or for its nodes: the job is known to Slurm but its script has not started.
WAITING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
# The script runs (or is being stopped, resized or signalled, which are passing conditions).
ACTIVE_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
)
FAILURE_STATES = frozenset(
    {"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
)
OUT_OF_TIME_STATES = frozenset({"TIMEOUT", "DEADLINE"})
FINAL_STATES = FAILURE_STATES | OUT_OF_TIME_STATES | {"COMPLETED", "CANCELLED"}
KNOWN_STATES = WAITING_STATES | ACTIVE_STATES | FINAL_STATES
# A job's base state, one of which every state list of Slurm 23.11 and later holds.
BASE_STATES = frozenset(
    {"PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL",
     "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
)  # fmt: skip
# Flags that name the job's state when set, in the order of Slurm's job_state_string(): the single
# state that 22.05 prints, and this layer's mapping, is the first of them present, else the base state.
NAMING_FLAGS = (
    "COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD", "SIGNALING",
)  # fmt: skip
# Flags that job_state_string() never prints: bookkeeping that does not change what the job is.
SILENT_FLAGS = frozenset({"LAUNCH_FAILED", "UPDATE_DB", "RECONFIG_FAIL", "POWER_UP_NODE"})


class UnknownSlurmState(ValueError):
    """Slurm reported a state this mapping does not know: refused rather than guessed."""


@dataclass(frozen=True)
class ChainOutcome:
    """The chain status a Slurm observation calls for, and the reason to report with a failure."""

    status: JobStatus
    last_error: str | None = None


def normalize_state(raw: str) -> str:
    """`CANCELLED by 1001` (sacct) and `cancelled` become `CANCELLED`; anything unknown is refused."""
    words = raw.strip().split()
    state = words[0].upper() if words else ""
    if state not in KNOWN_STATES:
        raise UnknownSlurmState(f"unknown Slurm job state {raw!r}")
    return state


def state_from_flags(parts: list[str]) -> str:
    """The one state of a state list (`["CANCELLED", "COMPLETING"]` is `COMPLETING`), as 22.05 names it.

    A list with a flag this layer does not know, or without exactly one base state, gives back that
    flag or the whole list, which normalize_state refuses: the job is then left alone, never guessed.
    """
    names = [part.strip().upper() for part in parts]
    for flag in NAMING_FLAGS:
        if flag in names:
            return flag
    unknown = [name for name in names if name not in BASE_STATES and name not in SILENT_FLAGS]
    if unknown:
        return unknown[0]
    bases = [name for name in names if name in BASE_STATES]
    if len(bases) == 1:
        return bases[0]
    return "+".join(names) or "(EMPTY)"


def is_final(state: str) -> bool:
    return normalize_state(state) in FINAL_STATES


def describe_exit(exit_code: int | None, signal: int | None) -> str:
    if signal:
        return f"killed by signal {signal}" + (f" (exit code {exit_code})" if exit_code else "")
    if exit_code is None:
        return "exit code unknown"
    return f"exit code {exit_code}"


def chain_outcome(
    state: str,
    exit_code: int | None = None,
    signal: int | None = None,
    *,
    cancel_requested: bool = False,
    reason: str | None = None,
) -> ChainOutcome:
    """Chain status for a Slurm state.

    `exit_code` is the process exit code (not the raw wait status) and `signal` the signal that ended
    it, if any. `cancel_requested` says whether the customer asked for the cancellation: a job
    cancelled by anyone else (an administrator, a preemption) is a failure with the reason.
    """
    name = normalize_state(state)
    detail = f", reason {reason}" if reason and reason not in {"None", "(null)"} else ""
    if name in WAITING_STATES:
        return ChainOutcome(JobStatus.SCHEDULED)
    if name in ACTIVE_STATES:
        return ChainOutcome(JobStatus.RUNNING)
    if name == "COMPLETED":
        return ChainOutcome(JobStatus.FINISHED)
    if name in OUT_OF_TIME_STATES:
        return ChainOutcome(JobStatus.OUT_OF_CREDITS)
    if name == "CANCELLED":
        if cancel_requested:
            return ChainOutcome(JobStatus.CANCELLED)
        return ChainOutcome(JobStatus.FAILED, f"Slurm job cancelled outside the grid{detail}")
    return ChainOutcome(JobStatus.FAILED, f"Slurm job {name}: {describe_exit(exit_code, signal)}{detail}")


def split_wait_status(raw: int) -> tuple[int, int | None]:
    """A raw wait status (as `squeue --json` reports `exit_code`) into (exit code, signal or None)."""
    if raw < 0:
        raise ValueError(f"negative wait status {raw}")
    signal = raw & 0x7F
    if signal:
        return 0, signal
    return (raw >> 8) & 0xFF, None


def parse_exit_pair(text: str) -> tuple[int, int | None]:
    """sacct's `ExitCode` `3:0` (exit code, signal) into (3, None); `0:15` into (0, 15)."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"malformed exit code {text!r} (expected <code>:<signal>)")
    code, signal = int(parts[0]), int(parts[1])
    return code, (signal or None)
