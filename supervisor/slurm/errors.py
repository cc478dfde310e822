"""Errors of the Slurm layer: each one names what went wrong, none of them should stop the daemon."""

from __future__ import annotations

from collections.abc import Sequence


class SlurmError(Exception):
    """Base of every error raised by the Slurm layer."""


class SlurmUnavailable(SlurmError):
    """Slurm (the controller, the login node or its SSH server) cannot be reached now; retry later."""


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


class InvalidSubmission(SlurmError, ValueError):
    """A submission refused before reaching Slurm (bad resources, script or working directory)."""


class UnixUserMissing(SlurmError):
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
