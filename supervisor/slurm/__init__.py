"""The supervisor's Slurm layer: submit, watch, cancel and extend jobs, locally, over SSH or via pyslurm."""

from supervisor.slurm.backend import CommandSlurmBackend, QueryResult, SlurmBackend
from supervisor.slurm.errors import (
    BackendUnavailable,
    InvalidSubmission,
    JobAlreadySubmitted,
    JobRefused,
    SlurmCommandFailed,
    SlurmCommandTimeout,
    SlurmError,
    SlurmOutputError,
    SlurmUnavailable,
    SubmissionRefused,
    UnixUserMissing,
)
from supervisor.slurm.factory import create_backend
from supervisor.slurm.models import JobSubmission, NodeHardware, ObservedJob, PartitionHardware, SlurmHealth
from supervisor.slurm.settings import JobUserSettings, SlurmSettings, SshSettings

__all__ = [
    "BackendUnavailable",
    "CommandSlurmBackend",
    "InvalidSubmission",
    "JobAlreadySubmitted",
    "JobRefused",
    "JobSubmission",
    "JobUserSettings",
    "NodeHardware",
    "ObservedJob",
    "PartitionHardware",
    "QueryResult",
    "SlurmBackend",
    "SlurmCommandFailed",
    "SlurmCommandTimeout",
    "SlurmError",
    "SlurmHealth",
    "SlurmOutputError",
    "SlurmSettings",
    "SlurmUnavailable",
    "SshSettings",
    "SubmissionRefused",
    "UnixUserMissing",
    "create_backend",
]
