"""What every deployment served from one cluster shares: the Slurm layer, the partition, the queue room.

One supervisor sells the same cluster on several deployments of the grid. Each deployment runs its
own chain lanes (follower, sender, claimer, work lane, registration, store); they meet here, so
`policy.max_queued_jobs` bounds the jobs queued in Slurm over all of them, and Slurm's wake-ups reach
whichever deployment the job belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.actions import Partition
from supervisor.config import SupervisorConfig
from supervisor.slurm.backend import SlurmBackend
from supervisor.slurm.factory import create_backend
from supervisor.slurm.wakeups import WakeupListener, listen


@dataclass
class QueueRoom:
    """`policy.max_queued_jobs` shared: each deployment says how many places it takes (jobs held,
    claims in flight), and a claimer counts the others' before it claims."""

    limit: int
    _occupants: dict[str, Callable[[], int]] = field(default_factory=dict)

    def join(self, deployment: str, occupied: Callable[[], int]) -> None:
        self._occupants[deployment] = occupied

    def taken_by_others(self, deployment: str) -> int:
        return sum(occupied() for name, occupied in self._occupants.items() if name != deployment)


@dataclass
class Site:
    """The cluster's shared parts. A daemon started alone makes its own (and closes it)."""

    slurm: SlurmBackend
    partition: Partition
    room: QueueRoom
    wakeups: WakeupListener | None = None
    #: Each deployment's wake-up target: (whether a Slurm job name is one it tracks, wake it).
    wake_targets: list[tuple[Callable[[str], bool], Callable[[], None]]] = field(default_factory=list)

    #: Slurm name prefix -> the deployment that named its jobs so.
    namespaces: dict[str, str] = field(default_factory=dict)

    def enter(
        self,
        deployment: str,
        prefix: str,
        tracked: Callable[[str], bool],
        wake: Callable[[], None],
    ) -> None:
        """A deployment whose chain answered takes its part; two entries of the configuration that
        turn out to be the same deployment (same chain id and MetaScheduler) would claim each other's
        jobs, so the second is refused."""
        other = self.namespaces.get(prefix)
        if other is not None and other != deployment:
            raise ValueError(
                f"chains {other!r} and {deployment!r} are the same deployment (chain id and MetaScheduler "
                f"{prefix.rstrip('-')}): list it once"
            )
        self.namespaces[prefix] = deployment
        self.wake_targets.append((tracked, wake))

    def tracks(self, slurm_name: str) -> bool:
        return any(tracked(slurm_name) for tracked, _ in self.wake_targets)

    def wake(self, slurm_name: str) -> None:
        for tracked, wake in self.wake_targets:
            if tracked(slurm_name):
                wake()

    async def close(self) -> None:
        if self.wakeups is not None:
            self.wakeups.close()
        await self.slurm.close()


async def open_site(config: SupervisorConfig) -> Site:
    """The shared Slurm layer, and the wake-up socket routed to whichever deployment a job is of."""
    slurm = create_backend(config.slurm)
    site = Site(slurm, Partition(slurm), QueueRoom(config.policy.max_queued_jobs))
    if config.slurm.wakeup_listen is not None:
        try:
            site.wakeups = await listen(config.slurm.wakeup_listen, site.tracks, site.wake)
        except BaseException:
            await slurm.close()
            raise
    return site
