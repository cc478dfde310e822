"""Slurm end states and exit codes to chain statuses (PROTOCOL.md section 9): pure mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grid_protocol.jobs import JobStatus
from supervisor.core.slurm_states import (
    KNOWN_STATES,
    UnknownSlurmState,
    chain_outcome,
    normalize_state,
    parse_exit_pair,
    split_wait_status,
)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("COMPLETED", JobStatus.FINISHED),
        ("FAILED", JobStatus.FAILED),
        ("NODE_FAIL", JobStatus.FAILED),
        ("OUT_OF_MEMORY", JobStatus.FAILED),
        ("BOOT_FAIL", JobStatus.FAILED),
        ("TIMEOUT", JobStatus.OUT_OF_CREDITS),
        ("DEADLINE", JobStatus.OUT_OF_CREDITS),
        ("PENDING", JobStatus.SCHEDULED),
        ("REQUEUED", JobStatus.SCHEDULED),
        ("RUNNING", JobStatus.RUNNING),
        ("COMPLETING", JobStatus.RUNNING),
        ("SUSPENDED", JobStatus.RUNNING),
    ],
)
def test_states_map_as_the_protocol_says(state: str, expected: JobStatus) -> None:
    assert chain_outcome(state, 0).status == expected


def test_cancelled_depends_on_who_asked() -> None:
    assert chain_outcome("CANCELLED by 1001", cancel_requested=True).status == JobStatus.CANCELLED
    outcome = chain_outcome("CANCELLED", cancel_requested=False, reason="Preempted")
    assert outcome.status == JobStatus.FAILED
    assert outcome.last_error == "Slurm job cancelled outside the grid, reason Preempted"


def test_failures_carry_the_process_exit_code_or_signal() -> None:
    assert chain_outcome("FAILED", 3).last_error == "Slurm job FAILED: exit code 3"
    assert chain_outcome("FAILED", 0, 9).last_error == "Slurm job FAILED: killed by signal 9"
    assert chain_outcome("OUT_OF_MEMORY", 137, reason="OutOfMemory").last_error == (
        "Slurm job OUT_OF_MEMORY: exit code 137, reason OutOfMemory"
    )
    assert chain_outcome("COMPLETED", 0).last_error is None


def test_unknown_states_are_refused_not_guessed() -> None:
    for bad in ("", "EXPLODED", "  "):
        with pytest.raises(UnknownSlurmState):
            chain_outcome(bad)
    assert normalize_state("cancelled by 0") == "CANCELLED"


@given(st.sampled_from(sorted(KNOWN_STATES)), st.integers(0, 255), st.booleans())
def test_every_known_state_maps_to_a_status(state: str, code: int, asked: bool) -> None:
    outcome = chain_outcome(state, code, cancel_requested=asked)
    assert outcome.status in {
        JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.FINISHED, JobStatus.FAILED,
        JobStatus.CANCELLED, JobStatus.OUT_OF_CREDITS,
    }  # fmt: skip
    assert (outcome.status == JobStatus.FAILED) == (outcome.last_error is not None)


@given(st.integers(0, 255))
def test_wait_status_of_a_normal_exit(code: int) -> None:
    assert split_wait_status(code << 8) == (code, None)


@given(st.integers(1, 127))
def test_wait_status_of_a_signal(signal: int) -> None:
    assert split_wait_status(signal) == (0, signal)


def test_exit_pairs() -> None:
    assert parse_exit_pair("3:0") == (3, None)
    assert parse_exit_pair("0:15") == (0, 15)
    for bad in ("3", "a:b", "1:2:3", ""):
        with pytest.raises(ValueError, match="malformed exit code"):
            parse_exit_pair(bad)
    with pytest.raises(ValueError):
        split_wait_status(-1)
