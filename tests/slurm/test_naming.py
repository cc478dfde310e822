"""Slurm names carry the deployment: the same job id on two deployments is two Slurm jobs."""

from __future__ import annotations

import pytest

from grid_protocol.jobs import JobStatus
from supervisor.actions import slurm_name
from supervisor.slurm.errors import InvalidSubmission
from supervisor.slurm.models import check_job_name
from supervisor.slurm.naming import SlurmNamespace, is_slurm_name
from supervisor.store import JobRecord

JOB = "0x" + "0" * 63 + "1"
FUJI = SlurmNamespace(43113, "0x" + "AbCd" * 10)
LOCAL = SlurmNamespace(31337, "0x" + "AbCd" * 10, owns_bare_names=True)


def test_a_name_is_the_chain_id_and_meta_scheduler_before_the_job_id() -> None:
    assert FUJI.name(JOB) == f"43113-{'abcd' * 10}-{JOB}"
    assert check_job_name(FUJI.name(JOB)) == FUJI.name(JOB)
    assert FUJI.name(JOB) != LOCAL.name(JOB)


def test_each_deployment_reads_back_only_its_own_names() -> None:
    assert FUJI.job_id(FUJI.name(JOB)) == JOB
    assert LOCAL.job_id(FUJI.name(JOB)) is None
    assert FUJI.job_id(LOCAL.name(JOB)) is None
    other_contract = SlurmNamespace(43113, "0x" + "ab" * 20)
    assert other_contract.job_id(FUJI.name(JOB)) is None


def test_bare_job_ids_belong_to_the_first_deployment_only() -> None:
    """Jobs submitted before names carried their deployment are the first deployment's."""
    assert LOCAL.job_id(JOB) == JOB
    assert FUJI.job_id(JOB) is None


def test_each_deployment_looks_at_its_own_folders_and_the_first_one_at_strays() -> None:
    assert FUJI.owns_entry(FUJI.name(JOB)) and not FUJI.owns_entry(LOCAL.name(JOB))
    assert LOCAL.owns_entry(LOCAL.name(JOB)) and LOCAL.owns_entry(JOB)
    assert LOCAL.owns_entry("lost+found") and not FUJI.owns_entry("lost+found")


@pytest.mark.parametrize(
    "name",
    [
        f"043113-{'abcd' * 10}-{JOB}",  # the same chain id written otherwise is another name
        f"43113-{'ABCD' * 10}-{JOB}",
        f"43113-{'abcd' * 10}{JOB}",
        f"43113-{'abcd' * 9}-{JOB}",
        f"-{'abcd' * 10}-{JOB}",
        f"43113-{'abcd' * 10}-{JOB}\n",
        f"43113-{'abcd' * 10}-{JOB}/x",
    ],
)
def test_anything_else_is_no_name_of_ours(name: str) -> None:
    assert FUJI.job_id(name) is None
    if not is_slurm_name(name):
        with pytest.raises(InvalidSubmission, match="is not a job id"):
            check_job_name(name)


def _record(**fields: object) -> JobRecord:
    base: dict[str, object] = {
        "job_id": JOB,
        "status": JobStatus.SCHEDULED,
        "customer": None,
        "slurm_job_id": None,
        "last_reported_status": None,
        "max_duration_minute": 5,
        "definition_json": None,
        "claimed_block": 1,
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    return JobRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_a_job_keeps_the_name_its_submission_was_begun_under() -> None:
    """New submissions carry the deployment; a job submitted before the upgrade (an intent or a
    Slurm id recorded without a name) is still looked up by its bare id."""
    assert slurm_name(_record(), FUJI) == FUJI.name(JOB)
    assert slurm_name(_record(submit_intent_at=1.0, slurm_name=FUJI.name(JOB)), LOCAL) == FUJI.name(JOB)
    assert slurm_name(_record(submit_intent_at=1.0), FUJI) == JOB
    assert slurm_name(_record(slurm_job_id=42), FUJI) == JOB
