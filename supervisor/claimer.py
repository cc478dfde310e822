"""The claimer: takes the jobs meta-scheduled to this provider, within the room the policy leaves.

Woken by this provider's meta-scheduling hints (and by the work cycle, on its period), it first asks
the chain one cheap question, the provider's three queues in one JSON-RPC batch, so hints about
other providers cost little. It claims as many jobs as `policy.max_queued_jobs` allows over every
deployment served and within this deployment's share, `chain.claims_per_transaction` to a transaction
where the MetaScheduler has `claimNextJobs` (else one `claimNextJob` each): jobs held (claimed, not
yet running in Slurm), claims queued or sent, and claims mined whose `ClaimJobEvent` the follower has
not read yet all take a place, a batch by its size. Never more than the queue holds beyond the claims
already on their way, so a burst causes no `NoJob()` revert.

The work cycle's round looks at the queues only when they may have changed: a block was read since
the last look (a customer's cancellation or top-up of a running job emits no event; it is in a
block), the last look found one not empty, or `QUEUE_LOOK_S` went by. An idle daemon then asks the
chain nothing about its queues each cycle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from supervisor.chain.contracts import ProtocolContracts, ProviderQueues
from supervisor.chain.follower import LogFollower
from supervisor.chain.rpc import describe
from supervisor.chain.sender import TransactionSender
from supervisor.core.decisions import SlurmPresence, claimable_now, claims_to_send, is_held
from supervisor.site import QueueRoom
from supervisor.slurm.backend import QueryResult
from supervisor.store import JobRecord, Store

log = structlog.get_logger("supervisor")

CLAIM_KIND = "claim_next_job"
#: The longest the work cycle goes without looking at the queues, however quiet the chain.
QUEUE_LOOK_S = 10.0


class Claimer:
    """One deployment's claims. `round()` is also what the work cycle calls on its period."""

    def __init__(
        self,
        *,
        deployment: str,
        limit: int,
        share: int,
        store: Store,
        contracts: ProtocolContracts,
        sender: TransactionSender,
        follower: LogFollower,
        room: QueueRoom,
        presence: Callable[[JobRecord, QueryResult | None], SlurmPresence],
        allowed: Callable[[], bool],
        per_transaction: int = 1,
    ) -> None:
        self.deployment, self.limit, self.share = deployment, limit, share
        self.per_transaction = per_transaction
        self.store, self.contracts, self.sender, self.follower = store, contracts, sender, follower
        self.room, self.presence, self.allowed = room, presence, allowed
        self.provider = sender.address
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        #: (the follower's last block, time.monotonic(), whether a queue held jobs) at the last look.
        self._last_look: tuple[int | None, float, bool] | None = None

    def hint(self) -> None:
        """A job was meta-scheduled somewhere (or the daemon stops): look at the queues now."""
        self._wake.set()

    async def run(self, stopped: Callable[[], bool], last_query: Callable[[], QueryResult | None]) -> None:
        """The claimer lane: a round per hint, while Slurm answered at its last look."""
        while not stopped():
            await self._wake.wait()
            self._wake.clear()
            query = last_query()
            if query is not None:  # Slurm answered at the last look: it can take jobs
                await self.round(query)

    async def round(self, query: QueryResult | None, *, periodic: bool = False) -> None:
        """Claims within the bound, then the cancellation and top-up queues; one round at a time
        (the work lane and the claimer lane both claim), so two never count the same room twice.
        `periodic` (the work cycle's): only when the queues may have changed since the last look."""
        if not self.allowed():
            return
        async with self._lock:
            block = self.follower.health.last_block
            if periodic and not self._worth_a_look(block):
                return
            try:
                queues = await self.contracts.provider_queues(self.provider)
                self._last_look = (
                    block,
                    time.monotonic(),
                    queues.claimable or queues.cancelling or queues.top_up,
                )
                await self._claim(query, queues.claimable)
                self._claim_queues(queues)
            except Exception as exc:  # the reports of the work lane must not wait for a failed claim
                log.warning("claiming failed, will retry", error=describe(exc))

    def _worth_a_look(self, block: int | None) -> bool:
        if self._last_look is None:
            return True
        looked_at_block, looked_at, not_empty = self._last_look
        return not_empty or block != looked_at_block or time.monotonic() - looked_at >= QUEUE_LOOK_S

    def occupied(self, query: QueryResult | None) -> int:
        """Places of `policy.max_queued_jobs` this deployment takes: jobs held and claims in flight."""
        return self._held(query) + self._in_flight()[1]

    def _held(self, query: QueryResult | None) -> int:
        """Jobs held, counted from the store as it is now: one recorded since a cycle began counts."""
        return sum(
            1
            for job in self.store.open_jobs()
            if is_held(ours=job.ours, status=job.status, presence=self.presence(job, query))
        )

    def _in_flight(self) -> tuple[int, int]:
        """(claims queued or sent, those plus claims mined whose ClaimJobEvent is not read yet)."""
        cursor = self.store.get_cursor(self.follower.settings.stream)
        unmined = self.store.open_claims(CLAIM_KIND)
        return unmined, unmined + self.store.claims_mined_after(
            CLAIM_KIND, cursor.block_number if cursor is not None else -1
        )

    def _room(self, query: QueryResult | None) -> tuple[int, int]:
        """(claims this deployment may send now, the jobs it holds)."""
        held = self._held(query)
        wanted = claims_to_send(
            held=held,
            in_flight=self._in_flight()[1],
            limit=self.limit,
            others=self.room.taken_by_others(self.deployment),
            share=self.share,
        )
        return wanted, held

    async def _claim(self, query: QueryResult | None, queued: bool) -> None:
        if query is None or not queued:
            return  # without Slurm, do not take more jobs; with an empty queue, there are none
        wanted, _ = self._room(query)
        if wanted == 0:
            return
        on_chain = await self.contracts.claimable_jobs(self.provider, wanted + self._in_flight()[0])
        # Counted again after the read: another deployment may have claimed meanwhile. From here to
        # the last claim queued nothing awaits, so no other claimer runs in between.
        room, held = self._room(query)
        wanted = min(room, claimable_now(queued_on_chain=on_chain, claims_unmined=self._in_flight()[0]))
        if wanted == 0:
            return
        per_transaction = self.per_transaction if self.contracts.claims_in_batches else 1
        for start in range(0, wanted, per_transaction):
            self.sender.submit_call(self.contracts.claim_next_jobs(min(per_transaction, wanted - start)))
        log.info("claiming jobs", count=wanted, held=held, per_transaction=per_transaction)
        self.follower.wake()

    def _claim_queues(self, queues: ProviderQueues) -> None:
        """Cancellation and top-up requests wait in queues of their own: claim them when there are some."""
        if queues.cancelling and not self.store.open_actions("claim_next_cancelling_job"):
            self.sender.submit_call(self.contracts.claim_next_cancelling_job())
        if queues.top_up and not self.store.open_actions("claim_next_top_up_job"):
            self.sender.submit_call(self.contracts.claim_next_top_up_job())
