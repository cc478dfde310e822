"""Slurm job names that say which deployment of the grid a job belongs to. Pure.

Job ids repeat across deployments (every MetaScheduler counts from the same start), so one cluster
serving several chains names each Slurm job `<chain id>-<MetaScheduler address>-<job id>`, and its
private folder under `jobs_root` the same. Jobs submitted before names carried their deployment are
named by the bare job id; those belong to the first deployment of the configuration, the one that
kept the state file they were recorded in.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

JOB_ID = r"0x[0-9a-f]{64}"
SLURM_NAME_PATTERN = re.compile(rf"^(?:(\d{{1,20}})-([0-9a-f]{{40}})-)?({JOB_ID})$")


def is_slurm_name(name: str) -> bool:
    """A name this supervisor gives: a job id, alone or after its deployment."""
    return SLURM_NAME_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True)
class SlurmNamespace:
    """The names of one deployment's Slurm jobs (and job folders)."""

    chain_id: int
    meta_scheduler: str
    #: Also owns the bare job-id names of the jobs submitted before names carried their deployment.
    owns_bare_names: bool = False

    @functools.cached_property
    def prefix(self) -> str:
        """Computed once: every open job's name is asked for at every cycle."""
        return f"{self.chain_id}-{self.meta_scheduler.lower().removeprefix('0x')}-"

    def name(self, job_id: str) -> str:
        """The Slurm name of a job of this deployment submitted now."""
        return self.prefix + job_id

    def job_id(self, slurm_name: str) -> str | None:
        """The job id a Slurm name stands for when the name is this deployment's, else None."""
        found = SLURM_NAME_PATTERN.fullmatch(slurm_name)
        if found is None:
            return None
        job_id = found.group(3)
        if found.group(1) is None:
            return job_id if self.owns_bare_names else None
        return job_id if slurm_name == self.name(job_id) else None

    def owns_entry(self, entry: str) -> bool:
        """Whether an entry of `jobs_root` is this deployment's to look at: the folders named for its
        jobs, and, for the first deployment, anything not named as any job (it reports those)."""
        return self.job_id(entry) is not None or (self.owns_bare_names and not is_slurm_name(entry))
