"""One decoding of JobRepository.get: the tuple web3 returns and the dict by field name agree."""

from __future__ import annotations

from typing import Any

from grid_protocol.abi import load_abi
from grid_protocol.jobs import Job, JobStatus
from supervisor.chain.abi import plain_value

CUSTOMER = "0x" + "ab" * 20
PROVIDER = "0x" + "cd" * 20


def job_struct() -> Any:
    (get,) = [e for e in load_abi("JobRepository") if e.get("type") == "function" and e["name"] == "get"]
    return get["outputs"][0]


def raw_job(status: int = 3) -> tuple[Any, ...]:
    definition = (1, 1024, 2, 3, "ab" * 32, 4, [("os", "linux")], [(("cpu", "x86"), b"<=")])
    cost = (200 * 10**18, 0, 5, True)
    times = (10, 20, 0, 0, 7, 0)
    job_name = b"hello".ljust(32, b"\0")
    return (
        b"\x01" * 32,
        status,
        CUSTOMER,
        PROVIDER,
        definition,
        cost,
        times,
        job_name,
        False,
        "oops \ufffd",
        -1,
    )


def test_the_tuple_and_the_plain_dict_decode_to_the_same_job() -> None:
    raw = raw_job()
    job = Job.from_tuple(raw)
    assert job == Job.from_plain(plain_value(raw, job_struct()))
    assert job.job_id == "0x" + "01" * 32
    assert job.status is JobStatus.RUNNING and job.status.is_hot
    assert job.customer.lower() == CUSTOMER and job.customer != CUSTOMER  # checksummed
    assert job.definition.uses == (("os", "linux"),)
    assert job.definition.affinity == ({"label": {"key": "cpu", "value": "x86"}, "op": "0x3c3d"},)
    assert (job.max_cost, job.pending_top_up, job.delegate_spending_authority) == (200 * 10**18, 5, True)
    assert (job.submit, job.start, job.block_number_state_change, job.exit_code) == (10, 20, 7, -1)


def test_hot_and_cold_statuses() -> None:
    assert [s for s in JobStatus if s.is_hot] == [
        JobStatus.PENDING,
        JobStatus.META_SCHEDULED,
        JobStatus.SCHEDULED,
        JobStatus.RUNNING,
    ]
    assert Job.from_tuple(raw_job(status=5)).status.is_cold
