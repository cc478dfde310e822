"""Building the configured Slurm backend."""

from __future__ import annotations

import os

import structlog

from supervisor.slurm import libslurm
from supervisor.slurm.backend import CommandSlurmBackend, SlurmBackend
from supervisor.slurm.errors import BackendUnavailable
from supervisor.slurm.runner import LocalRunner
from supervisor.slurm.settings import SlurmSettings
from supervisor.slurm.ssh import SshRunner

log = structlog.get_logger("supervisor.slurm")


def create_backend(settings: SlurmSettings) -> SlurmBackend:
    """local: commands on this machine; ssh: commands on the login node; pyslurm: the optional extra."""
    if settings.backend == "local":
        conf = str(settings.slurm_conf) if settings.slurm_conf else None
        backend = CommandSlurmBackend(
            LocalRunner(slurm_conf=conf, command_prefix=settings.command_prefix),
            settings,
            root_on_login_node=settings.submit_as_root and os.geteuid() == 0 and not settings.command_prefix,
        )
        attach_library(backend)
        return backend
    if settings.backend == "ssh":
        assert settings.ssh is not None  # guaranteed by SlurmSettings' validation
        return CommandSlurmBackend(
            SshRunner(settings.ssh, command_prefix=settings.command_prefix),
            settings,
            submit_as_job_user=settings.ssh.login_as_job_user,
        )
    from supervisor.slurm.pyslurm_backend import PyslurmBackend

    return PyslurmBackend(settings)


def attach_library(backend: CommandSlurmBackend) -> None:
    """Give the local backend libslurm's submission call as its settings ask: required with
    `libslurm` (BackendUnavailable saying why not), where it works with `auto`, never with `sbatch`."""
    settings = backend.settings
    if settings.submitter == "sbatch" or settings.command_prefix:
        log.info("Slurm submissions through sbatch", submitter=settings.submitter)
        return
    try:
        options = libslurm.library_options(settings.extra_sbatch_args)
        module = libslurm.load(str(settings.slurm_conf) if settings.slurm_conf else None)
    except (libslurm.UnmappedOption, BackendUnavailable) as exc:
        if settings.submitter == "libslurm":
            raise BackendUnavailable(f"slurm.submitter is 'libslurm', but {exc}") from exc
        backend.library_refusal = str(exc)
        log.info("Slurm submissions through sbatch: libslurm's call is not usable here", reason=str(exc))
        return
    backend.library = libslurm.LibslurmSubmitter(module, settings.command_timeout_seconds)
    backend.library_options = options
    log.info("Slurm submissions through libslurm's call", workers=libslurm.WORKERS)
