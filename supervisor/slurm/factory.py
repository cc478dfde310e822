"""Building the configured Slurm backend."""

from __future__ import annotations

import os

from supervisor.slurm.backend import CommandSlurmBackend, SlurmBackend
from supervisor.slurm.runner import LocalRunner
from supervisor.slurm.settings import SlurmSettings
from supervisor.slurm.ssh import SshRunner


def create_backend(settings: SlurmSettings) -> SlurmBackend:
    """local: commands on this machine; ssh: commands on the login node; pyslurm: the optional extra."""
    if settings.backend == "local":
        conf = str(settings.slurm_conf) if settings.slurm_conf else None
        return CommandSlurmBackend(
            LocalRunner(slurm_conf=conf, command_prefix=settings.command_prefix),
            settings,
            root_on_login_node=settings.submit_as_root and os.geteuid() == 0 and not settings.command_prefix,
        )
    if settings.backend == "ssh":
        assert settings.ssh is not None  # guaranteed by SlurmSettings' validation
        return CommandSlurmBackend(
            SshRunner(settings.ssh, command_prefix=settings.command_prefix),
            settings,
            submit_as_job_user=settings.ssh.login_as_job_user,
        )
    from supervisor.slurm.pyslurm_backend import PyslurmBackend

    return PyslurmBackend(settings)
