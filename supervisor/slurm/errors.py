"""Errors of the Slurm layer: each one names what went wrong, none of them should stop the daemon."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class SlurmError(Exception):
    """Base of every error raised by the Slurm layer.

    `refuses_job` tells a definite refusal of the job asked for (the same request would fail the same
    way: refuse the job) from everything else (Slurm unreachable, a command that hung or failed for
    another reason, an answer that could not be read: try again later).
    """

    refuses_job: ClassVar[bool] = False


class SlurmUnavailable(SlurmError):
    """Slurm (the controller, the login node or its SSH server) cannot be reached now; retry later.

    Also raised when a look-up a submission depends on failed: nothing was submitted.
    """


class JobRefused(SlurmError):
    """A definite refusal of this one job: submitting it again would fail the same way."""

    refuses_job: ClassVar[bool] = True


class SubmissionRefused(JobRefused):
    """Slurm refused the job (invalid partition, account or QOS, resources no node has, a policy
    limit, an invalid time limit...); `reason` is Slurm's own message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason.strip()
        super().__init__(f"Slurm refused the job: {self.reason[-500:]}")


class SlurmCommandTimeout(SlurmUnavailable):
    """A Slurm command did not answer within its timeout; it was stopped."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        super().__init__(f"`{argv[0] if argv else '?'}` did not answer within {timeout:g}s")


class SlurmCommandFailed(SlurmError):
    """A Slurm command ran and refused the request (bad option, unknown job, permission)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(
            f"`{argv[0] if argv else '?'}` failed with status {returncode}: {self.stderr[-500:]}"
        )


class SlurmOutputError(SlurmError):
    """A Slurm command answered with output this layer cannot read."""


class InvalidSubmission(JobRefused, ValueError):
    """A submission refused before reaching Slurm (bad resources, script or working directory)."""


class UnixUserMissing(JobRefused):
    """The UNIX user a job should run as does not exist on the cluster."""

    def __init__(self, user: str) -> None:
        self.user = user
        super().__init__(f"UNIX user {user!r} does not exist on the Slurm cluster: the job is refused")


class JobAlreadySubmitted(SlurmError):
    """Slurm already has (or had) a job with this name: submitting again would duplicate it."""

    def __init__(self, name: str, slurm_job_id: int) -> None:
        self.name = name
        self.slurm_job_id = slurm_job_id
        super().__init__(f"job {name} is already known to Slurm as job {slurm_job_id}")


class BackendUnavailable(SlurmError):
    """The configured backend cannot run on this machine (for example pyslurm not installed)."""


class JobFolderUnsafe(JobRefused):
    """The job's folder exists but is not a plain directory of the job's user (a symlink, another
    user's folder taking the job's name): running the job there could expose its output."""

    def __init__(self, folder: str, why: str) -> None:
        self.folder = folder
        super().__init__(f"the job folder {folder} cannot be used: {why}")


class JobsRootUnusable(SlurmError):
    """The job folder cannot be made under jobs_root (missing, not writable, unsafe permissions):
    the operator's to fix; the job waits, it is not refused."""
