"""The service: one set of chain lanes (`Daemon`) per deployment of the grid, over one cluster.

Each deployment listed in the configuration runs its own follower, sender, claimer, work lane,
registration and store, so a chain that is down, slow or reorganising holds up only its own jobs.
They share the Slurm layer and the queue room (`site.Site`). SIGTERM drains every deployment; a lane
that crashes in one of them stops them all (`LaneCrashed`), as it would stop a single daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from supervisor.config import SupervisorConfig
from supervisor.daemon import Daemon, DaemonListener, LaneCrashed
from supervisor.site import open_site

log = structlog.get_logger("supervisor")


class Service:
    """Every deployment of the configuration. `run()` until `stop()` (SIGTERM), then drain and return."""

    def __init__(self, config: SupervisorConfig, listeners: list[DaemonListener] | None = None) -> None:
        self.config = config
        self.daemons = [Daemon(config, listeners, deployment=deployment) for deployment in config.deployments]
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        for daemon in self.daemons:
            daemon.stop()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        site = await open_site(self.config)
        try:
            tasks = []
            for daemon in self.daemons:
                daemon.use_site(site)
                # Every log line of a deployment's lanes (the tasks they start inherit it) names it.
                with structlog.contextvars.bound_contextvars(chain=daemon.name):
                    tasks.append(asyncio.create_task(self._run_one(daemon), name=f"deployment {daemon.name}"))
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await site.close()
        errors = [result for result in results if isinstance(result, BaseException)]
        crashed = [error for error in errors if isinstance(error, LaneCrashed)]
        if crashed:
            raise crashed[0]
        if errors:
            raise errors[0]

    async def _run_one(self, daemon: Daemon) -> None:
        """One deployment's lanes; when they end for any reason but a stop, the others stop too."""
        try:
            await daemon.run()
        finally:
            if not self._stopping:
                log.critical("a deployment stopped: stopping the others", chain=daemon.name)
                self.stop()
