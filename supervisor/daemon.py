"""The supervisor daemon: wires the chain, the store, Slurm and the sbatch service around the decisions.

The data path, one module a step: the follower (`chain/follower.py`) hands this provider's events to
`intake.py`, which records them in the store in the same local transaction as its cursor; the work
lane here reads the store and Slurm, asks `core/decisions.py` what each job needs and hands that to
`actions.py` (submit, report, refuse, cancel, time limits, top-ups), whose writes to the chain go to
the outbox that the transaction sender (`chain/sender.py`) delivers, one nonce owner for every
write. `registration.py` keeps the provider's offer on chain.

The lanes run side by side, each woken by its own events: the follower (new blocks, the WebSocket
hint), the claimer (meta-scheduling hints, then one cheap look at this provider's queue), the work
lane (a recorded change to a held job, or its period) and the registration; one that crashes stops
the daemon with `LaneCrashed` naming it, rather than vanishing. Nothing is acted on before it is in the store, and
every action is idempotent, so a crash at any point is repaired by the next start's reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import structlog

from grid_protocol.jobs import JobStatus
from supervisor.actions import (
    Health,
    JobActions,
    Partition,
    reclaimed,
    since,
    slurm_name,
    time_limit_shortfall,
)
from supervisor.chain.contracts import JobReadError, ProtocolContracts
from supervisor.chain.follower import FollowerSettings, LogFollower
from supervisor.chain.keys import Signer, load_signer
from supervisor.chain.rpc import BATCH_LIMIT, check_chain_id, connect_http, describe, is_transient
from supervisor.chain.sender import SenderSettings, TransactionSender
from supervisor.claimer import Claimer
from supervisor.config import Deployment, SupervisorConfig
from supervisor.core.decisions import (
    Action,
    CancelInSlurm,
    Forget,
    JobSituation,
    Report,
    SlurmPresence,
    SlurmView,
    Submit,
    decide,
    reconcile_slice,
)
from supervisor.core.slurm_states import ACTIVE_STATES, WAITING_STATES, UnknownSlurmState
from supervisor.faults import crash_point
from supervisor.intake import JobEventHandler
from supervisor.registration import Registrar
from supervisor.retry import Backoff, Failure, KeepAlive, sleep_or_wake
from supervisor.sbatch.client import SbatchClient
from supervisor.site import Site, open_site
from supervisor.slurm.backend import QueryResult, SlurmBackend
from supervisor.slurm.errors import SlurmError
from supervisor.slurm.folders import remove_ended_job_folders
from supervisor.slurm.job_folders import CleanupPlan, KnownJob
from supervisor.slurm.models import ObservedJob
from supervisor.slurm.naming import SlurmNamespace
from supervisor.store import JobRecord, Store
from supervisor.submitter import Submitter

log = structlog.get_logger("supervisor")
T = TypeVar("T")

#: Jobs acted on at once in a cycle (script fetches, submissions, cancellations run side by side).
JOB_CONCURRENCY = 8
DRAIN_TIMEOUT_S = 30.0
#: Open jobs read on chain per reconcile pass: one JSON-RPC batch.
RECONCILE_SLICE = BATCH_LIMIT
#: Seconds between two passes of the state file's retention.
PRUNE_INTERVAL_S = 3600.0
#: After a wake-up from Slurm, jobs still in a state between two (their prolog or epilog runs) are
#: looked at again this often, for this long, so the change they announced is seen soon after.
SETTLE_INTERVAL_S = 0.2
SETTLE_WINDOW_S = 5.0
SETTLING_STATES = frozenset({"CONFIGURING", "COMPLETING"})


@dataclass(frozen=True)
class OpenJobs:
    """The open jobs as the store holds them, with their Slurm names and what the Slurm query asks,
    derived once per change: with thousands of jobs open, a cycle in which no record changed derives
    nothing again (the store hands back the same records)."""

    jobs: list[JobRecord]
    names: list[str]  # each job's Slurm name, in the order of `jobs`
    regular: frozenset[str]  # the names asked for together: all but the re-claimed jobs'
    slurm_ids: Mapping[str, int]  # the regular names with a Slurm id
    regular_since: datetime | None
    reclaimed: list[tuple[JobRecord, str]]  # each asked for with a later bound of its own

    @classmethod
    def of(cls, jobs: list[JobRecord], name: Callable[[JobRecord], str]) -> OpenJobs:
        names = [name(job) for job in jobs]
        regular = [(job, n) for job, n in zip(jobs, names, strict=True) if not reclaimed(job)]
        return cls(
            jobs=jobs,
            names=names,
            regular=frozenset(n for _, n in regular),
            slurm_ids=MappingProxyType(
                {n: job.slurm_job_id for job, n in regular if job.slurm_job_id is not None}
            ),
            regular_since=since([job for job, _ in regular]),
            reclaimed=[(job, n) for job, n in zip(jobs, names, strict=True) if reclaimed(job)],
        )

    def holds(self, jobs: list[JobRecord]) -> bool:
        """Whether these are the very records this was derived from."""
        return len(jobs) == len(self.jobs) and all(a is b for a, b in zip(jobs, self.jobs, strict=True))


class LaneCrashed(RuntimeError):
    """A lane of the daemon raised: the daemon stopped (systemd restarts it; the store resumes)."""


class DaemonListener(Protocol):
    """Told of the daemon's life: systemd notification and metrics hook in here."""

    def ready(self, daemon: Daemon) -> None:
        """The daemon caught up with the chain and finished its first work cycle."""

    def cycle_done(self, daemon: Daemon) -> None:
        """A work cycle ended (successfully or not): the loops are alive."""

    def stopping(self, daemon: Daemon) -> None:
        """Draining has begun."""

    def waiting(self, daemon: Daemon, what: str) -> None:
        """Start-up is waiting for a dependency (called at every retry, so start-up is seen alive)."""


class Daemon:
    """One provider's supervisor. `run()` until `stop()` (SIGTERM), then drain and return."""

    def __init__(
        self,
        config: SupervisorConfig,
        listeners: list[DaemonListener] | None = None,
        *,
        deployment: Deployment | None = None,
    ) -> None:
        self.config = config
        #: The deployment of the grid these lanes serve (the configuration's first when not given).
        self.deployment = deployment if deployment is not None else config.deployments[0]
        self.listeners = list(listeners or [])
        self._site: Site | None = None
        self._owns_site = True
        self._names: SlurmNamespace | None = None
        self.health = Health()
        self.ready = False
        self.cycles = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_query: QueryResult | None = None
        self._query_asked_at = 0.0  # time.monotonic() when Slurm was asked for `_last_query`
        self._claiming = True
        self._store: Store | None = None
        self._signer: Signer | None = None
        self._contracts: ProtocolContracts | None = None
        self._sender: TransactionSender | None = None
        self._follower: LogFollower | None = None
        self._slurm: SlurmBackend | None = None
        self._sbatch: SbatchClient | None = None
        self._partition: Partition | None = None
        self._actions: JobActions | None = None
        self._submitter: Submitter | None = None
        self._claimer: Claimer | None = None
        self._observed: Mapping[str, ObservedJob] = {}
        self._open: OpenJobs | None = None
        #: Jobs found quiet at the last cycle, with the inputs they were found quiet with.
        self._quiet: dict[str, tuple[JobRecord, ObservedJob]] = {}
        self._last_reconcile = 0.0
        self._last_prune = 0.0
        self._folders_said: set[str] = set()
        self._last_chain_read = 0.0
        self._chain_read_at: dict[str, float] = {}  # job id -> monotonic time the reconciler read it
        self._tasks: list[asyncio.Task[Any]] = []
        self._lane_error: LaneCrashed | None = None
        self._settle_until = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin draining: stop claiming, deliver the outbox, exit (Slurm jobs keep running)."""
        if not self._stop.is_set():
            log.info("stop requested: draining")
            for listener in self.listeners:
                listener.stopping(self)
        self._claiming = False
        self._stop.set()
        self._wake.set()
        if self._claimer is not None:
            self._claimer.hint()

    def use_site(self, site: Site) -> None:
        """Run on a cluster's shared parts (`service.Service` does, for several deployments): the
        service owns them and answers SIGTERM."""
        self._site, self._owns_site = site, False

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    @property
    def names(self) -> SlurmNamespace:
        """How this deployment's jobs are named in Slurm (known once the chain answered)."""
        assert self._names is not None
        return self._names

    @property
    def provider(self) -> str:
        assert self._signer is not None
        return self._signer.address

    async def run(self) -> None:
        """Start, run the lanes until `stop()` (or until one crashes: LaneCrashed), then drain."""
        loop = asyncio.get_running_loop()
        # A daemon on a site of its own answers SIGTERM; under a service, the service does.
        for sig in (signal.SIGTERM, signal.SIGINT) if self._owns_site else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            if not await self.start():
                return
            lanes: dict[str, Callable[[], Awaitable[Any]]] = {
                "follower": self._follower_loop,
                "work": self._work_loop,
                "claimer": self._claim_loop,
                "submitter": self._submitter_loop,
                "register": self._register_when_possible,
            }
            self._tasks = [
                asyncio.create_task(self._lane(name, lane), name=name) for name, lane in lanes.items()
            ]
            await self._stop.wait()
        finally:
            await self.shutdown()
        if self._lane_error is not None:
            raise self._lane_error

    async def _lane(self, name: str, lane: Callable[[], Awaitable[Any]]) -> None:
        """Run one lane; if it raises, stop the whole daemon (drained) with LaneCrashed naming it.

        The lanes are plain tasks rather than an asyncio.TaskGroup because stopping is ordered: claims
        stop, the work lane ends, the outbox drains, and only then does the follower stop.
        """
        try:
            await lane()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.critical(
                "a lane of the daemon crashed: stopping", lane=name, error=describe(exc), exc_info=True
            )
            if self._lane_error is None:
                self._lane_error = LaneCrashed(
                    f"the {name} lane crashed: {describe(exc)} (chain {self.name})"
                )
            self.stop()

    async def _until_ready(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """Retry `attempt` with backoff until it succeeds or the daemon stops; says once what it waits for."""

        def waiting(failure: Failure) -> None:
            if failure.attempt == 1:
                log.warning(f"waiting for {what}", error=describe(failure.error))
            for listener in self.listeners:
                listener.waiting(self, what)

        return await KeepAlive(
            Backoff(0.5, 15.0),
            on_failure=waiting,
            on_recovery=lambda: log.info(f"{what}: ready"),
            stopped=self._stop.is_set,
            sleep=sleep_or_wake(self._stop),
        ).until_ok(attempt)

    async def start(self) -> bool:
        """Open the store, connect the chain, start the sender: what `run()` does before its loops.

        With `start()`, `follower.poll_once()`, `cycle()` and `shutdown()` a caller drives the daemon
        one step at a time (the crash and recovery tests do); False when stopped while waiting.
        """
        cfg, chain = self.config, self.deployment.chain
        self._store = Store.open(self.deployment.store_path)
        self._signer = load_signer(self.deployment.key.file, self.deployment.key.password_file)
        log.info("supervisor starting", provider=self.provider, store=str(self.deployment.store_path))
        if self._site is None:
            self._site = await open_site(self.config)  # serving one deployment alone
        site = self._site
        site.room.join(self.name, self.occupied)  # counted as 0 until the chain answers
        w3 = connect_http(chain.rpc_url)

        async def discover() -> tuple[int, ProtocolContracts]:
            chain_id = await check_chain_id(w3, chain.chain_id)
            return chain_id, await ProtocolContracts.discover(w3, chain.meta_scheduler)

        found = await self._until_ready("the chain (RPC and contracts)", discover)
        if found is None:
            return False
        chain_id, contracts = found
        self._contracts = contracts
        self.store.bind_deployment(chain_id, contracts.meta_scheduler.address)
        self._names = SlurmNamespace(
            chain_id, contracts.meta_scheduler.address, owns_bare_names=self.deployment.first
        )
        site.enter(self.name, self._names.prefix, self._tracked_slurm_name, self._on_slurm_wakeup)
        self.health.chain_ok = True
        sender_settings = SenderSettings(
            chain_id=chain.chain_id,
            receipt_deadline_s=chain.receipt_deadline_seconds,
            max_fee_per_gas_cap=None
            if chain.max_fee_per_gas_gwei is None
            else int(chain.max_fee_per_gas_gwei * 10**9),
        )
        self._sender = TransactionSender(w3, self._signer, self.store, sender_settings)
        sender = self._sender

        async def start_sender() -> bool:
            await sender.start()
            return True

        if not await self._until_ready("the transaction sender", start_sender):
            return False
        self._follower = LogFollower(
            w3,
            self.store,
            contracts.follower_sources(self.provider, tracked=self._tracked),
            JobEventHandler(self._on_claim_hint, self._wake.set, self._on_claimed),
            FollowerSettings(
                start_block=chain.start_block,
                confirmations=chain.confirmations,
                poll_interval_s=chain.poll_interval_seconds,
                chain_id=chain.chain_id,
            ),
            ws_url=chain.ws_url,
        )
        self._claimer = Claimer(
            deployment=self.name,
            limit=cfg.policy.max_queued_jobs,
            share=self.deployment.max_queued_jobs,
            store=self.store,
            contracts=contracts,
            sender=sender,
            follower=self._follower,
            room=site.room,
            presence=self._presence,
            allowed=lambda: self._claiming,
            per_transaction=self.deployment.chain.claims_per_transaction,
        )
        self._slurm = site.slurm
        self._sbatch = SbatchClient.from_settings(self.deployment.sbatch, self._signer)
        self._partition = site.partition
        self._actions = JobActions(
            cfg,
            self.store,
            contracts,
            sender,
            self._slurm,
            self._sbatch,
            self._signer,
            self._partition,
            self.health,
            self.names,
        )
        self._submitter = Submitter(self.store, self._actions, lambda: self._last_query is not None)
        return True

    async def shutdown(self) -> None:
        """Stop the loops, deliver the outbox (bounded), close every connection and the store."""
        self._claiming = False
        for task in self._tasks:
            if task.get_name() != "follower":
                task.cancel()
        for task in self._tasks:
            if task.get_name() != "follower":
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._sender is not None:
            depth = self.store.outbox_depth()
            if depth:
                log.info("delivering the outbox before exit", outbox_depth=depth)
            await self._sender.stop(drain_timeout_s=DRAIN_TIMEOUT_S)
        if self._follower is not None:
            self._follower.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._site is not None and self._owns_site:
            await self._site.close()
        if self._sbatch is not None:
            await self._sbatch.close()
        if self._store is not None:
            left = self._store.outbox_depth()
            self._store.close()
            log.info("supervisor stopped", outbox_left=left)

    def _tracked(self, job_id: str) -> bool:
        """Whether the store follows this job's chain status (the follower's filter)."""
        record = self.store.get_job(job_id)
        return record is not None and not record.closed

    def _tracked_slurm_name(self, name: str) -> bool:
        """Whether a Slurm job name is one of this deployment's open jobs (its wake-ups count)."""
        job_id = self.names.job_id(name)
        return job_id is not None and self._tracked(job_id)

    def slurm_name(self, job: JobRecord) -> str:
        return slurm_name(job, self.names)

    def _on_slurm_wakeup(self) -> None:
        """Slurm says one of our jobs started or ended: the work lane looks now, and again shortly
        while the job is still between two states."""
        self._settle_until = time.monotonic() + SETTLE_WINDOW_S
        self._wake.set()

    def _on_claim_hint(self) -> None:
        """A job was meta-scheduled somewhere: the claimer looks at this provider's queue now."""
        if self._claimer is not None:
            self._claimer.hint()

    def occupied(self) -> int:
        """Places of `policy.max_queued_jobs` this deployment takes (the others' claimers ask)."""
        return 0 if self._claimer is None else self._claimer.occupied(self._last_query)

    async def _claim_loop(self) -> None:
        assert self._claimer is not None
        await self._claimer.run(self._stop.is_set, lambda: self._last_query)

    def _on_claimed(self, job_id: str) -> None:
        """A claim was recorded: the submitter lane takes it now."""
        if self._submitter is not None and self._claiming:
            self._submitter.claimed(job_id)

    async def _submitter_loop(self) -> None:
        assert self._submitter is not None
        await self._submitter.run()

    async def _follower_loop(self) -> None:
        assert self._follower is not None
        await self._follower.run()

    # -- registration -------------------------------------------------------------------------

    async def _register_when_possible(self) -> None:
        registration = self.deployment.registration
        assert self._partition is not None
        await self._until_ready("Slurm's partition description", self._partition.describe)
        if registration is None or not registration.enabled or self._stop.is_set():
            return
        assert self._contracts is not None and self._sender is not None
        registrar = Registrar(self.provider, self._contracts, self._sender, self.store)

        async def register() -> bool:
            assert self._partition is not None and self._partition.hardware is not None
            assert registration is not None
            registered = await registrar.register(self._partition.hardware, registration)
            self.health.registered = self.health.registered or registered
            return registered

        await self._until_ready("the provider registration", register)

    # -- the work loop ------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        period = self.config.policy.slurm_poll_seconds
        while not self._stop.is_set():
            self._wake.clear()  # a hint that arrives during the cycle wakes the next one at once
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad cycle never ends the daemon
                log.exception("work cycle failed, will retry", error=describe(exc))
            self.cycles += 1
            self._announce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)

    def _announce(self) -> None:
        follower = self._follower
        if not self.ready and follower is not None and follower.health.caught_up:
            self.ready = True
            log.info("supervisor ready: caught up with the chain", block=follower.health.last_block)
            for listener in self.listeners:
                listener.ready(self)
        for listener in self.listeners:
            listener.cycle_done(self)

    @property
    def follower(self) -> LogFollower | None:
        return self._follower

    @property
    def sender(self) -> TransactionSender | None:
        return self._sender

    @property
    def slurm(self) -> SlurmBackend | None:
        return self._slurm

    @property
    def contracts(self) -> ProtocolContracts | None:
        return self._contracts

    async def cycle(self) -> None:
        """One pass: claim, then look at every open job and act on what it needs."""
        open_jobs = self._open_jobs()
        query = await self._query_slurm(open_jobs)
        if query is not None and self._record_slurm_ids(open_jobs, query):
            open_jobs = self._open_jobs()
        reconciled = await self._reconciled(open_jobs)
        if reconciled is None:
            return
        open_jobs = reconciled
        jobs = open_jobs.jobs
        # The claimer lane answers hints at once; the cycle claims too when the queues may have
        # changed (see Claimer), which also keeps the watchdog honest: a chain that hangs holds the
        # cycle within QUEUE_LOOK_S.
        assert self._claimer is not None
        await self._claimer.round(query, periodic=True)
        actions = self._actions
        assert actions is not None
        if query is not None:
            await actions.cancel_orphans()
        limit = asyncio.Semaphore(JOB_CONCURRENCY)

        async def act(job: JobRecord, situation: JobSituation, decided: list[Action]) -> None:
            async with limit:
                with structlog.contextvars.bound_contextvars(job_id=job.job_id):
                    try:
                        await self._act(job, situation, decided)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.exception("acting on the job failed, will retry", error=describe(exc))

        await asyncio.gather(*(act(*work) for work in self._work_to_do(open_jobs, query)))
        if time.monotonic() - self._last_reconcile > self.config.policy.reconcile_interval_seconds:
            await actions.refresh_delegation(jobs)
            self._last_reconcile = time.monotonic()
        else:
            await actions.refresh_delegation(jobs, unread_only=True)
        if time.monotonic() - self._last_prune > PRUNE_INTERVAL_S:
            await self.remove_old_job_folders()  # before the store forgets which jobs ended
            self._prune()
            self._last_prune = time.monotonic()

    async def remove_old_job_folders(self) -> CleanupPlan | None:
        """Remove the folders of jobs that ended more than `policy.job_folder_retention_days` ago."""
        assert self._slurm is not None
        users = self.config.slurm.users
        known: dict[str, KnownJob] = {}
        for record in self.store.list_jobs():
            try:
                user: str | None = users.user_for(record.customer or "")
            except ValueError:
                user = None
            known[self.slurm_name(record)] = KnownJob(user, record.updated_at if record.closed else None)
        try:
            return await remove_ended_job_folders(
                self._slurm,
                str(self.config.policy.jobs_root),
                known,
                now=time.time(),
                retention_seconds=self.config.policy.job_folder_retention_days * 86400,
                said=self._folders_said,
                mine=self.names.owns_entry,
            )
        except SlurmError as exc:
            log.warning("job folders not cleaned up, will retry", error=str(exc))
            return None

    def _prune(self) -> None:
        """Keep the state file bounded: forget closed jobs and delivered writes past the retention."""
        retention_s = self.config.store.retention_days * 86400
        jobs, actions = self.store.prune(time.time() - retention_s)
        if jobs or actions:
            log.info("state file pruned", jobs_forgotten=jobs, chain_writes_forgotten=actions)

    def _open_jobs(self) -> OpenJobs:
        jobs = self.store.open_jobs()
        if self._open is None or not self._open.holds(jobs):
            self._open = OpenJobs.of(jobs, self.slurm_name)
        return self._open

    async def _query_slurm(self, open_jobs: OpenJobs) -> QueryResult | None:
        assert self._slurm is not None
        asked_at = time.monotonic()
        try:
            asked = await self._query_in_groups(open_jobs) if open_jobs.jobs else None
            if asked is not None:
                result = asked
            else:
                # Nothing to look up (no job, or only the lane's fresh claims): ask Slurm for the
                # partition instead, so that no job is claimed while Slurm cannot take it.
                assert self._partition is not None
                await self._partition.describe()
                result = QueryResult({}, frozenset(), True, True)
        except SlurmError as exc:
            if self.health.slurm_ok or "slurm" not in self.health.problems:
                log.error("Slurm unavailable: jobs wait until it answers", error=str(exc))
            self.health.slurm_ok = False
            self.health.problems["slurm"] = str(exc)
            self._last_query = None  # the claimer takes no job while Slurm does not answer
            return None
        if not self.health.slurm_ok and "slurm" in self.health.problems:
            log.info("Slurm answers again")
        self.health.slurm_ok = True
        self.health.problems.pop("slurm", None)
        self._observed = result.jobs
        self._last_query, self._query_asked_at = result, asked_at
        if time.monotonic() < self._settle_until and any(
            seen.state in SETTLING_STATES for seen in result.jobs.values()
        ):
            asyncio.get_running_loop().call_later(SETTLE_INTERVAL_S, self._wake.set)
        return result

    async def _query_in_groups(self, open_jobs: OpenJobs) -> QueryResult | None:
        """One query for all jobs, except re-claimed ones (each of those has a later bound of its own)
        and those the submitter lane holds: fresh claims, not in Slurm before the lane puts them there
        (during a burst, hundreds of names that would be looked for, and then in accounting)."""
        assert self._slurm is not None
        held = self._submitter.holding() if self._submitter is not None else frozenset()
        regular = open_jobs.regular
        if held:
            regular = frozenset(
                name
                for job, name in zip(open_jobs.jobs, open_jobs.names, strict=True)
                if name in open_jobs.regular and job.job_id not in held
            )
        if not regular and not open_jobs.reclaimed:
            return None
        results = []
        if regular:
            results.append(
                await self._slurm.query(regular, since=open_jobs.regular_since, slurm_ids=open_jobs.slurm_ids)
            )
        for job, name in open_jobs.reclaimed:
            results.append(await self._slurm.query([name], since=since([job])))
        if len(results) == 1:
            return results[0]
        return QueryResult(
            jobs={name: seen for result in results for name, seen in result.jobs.items()},
            not_found=frozenset().union(*(result.not_found for result in results)),
            not_found_is_certain=all(result.not_found_is_certain for result in results),
            accounting_available=all(result.accounting_available for result in results),
        )

    def _record_slurm_ids(self, open_jobs: OpenJobs, query: QueryResult) -> bool:
        """Keep the Slurm id of each job Slurm showed; True when one changed."""
        changed = False
        observed = query.jobs
        for job, name in zip(open_jobs.jobs, open_jobs.names, strict=True):
            seen = observed.get(name)
            if seen is not None and job.slurm_job_id != seen.slurm_job_id:
                self.store.update_job(job.job_id, slurm_job_id=seen.slurm_job_id)
                changed = True
        return changed

    async def _reconciled(self, open_jobs: OpenJobs) -> OpenJobs | None:
        """The open jobs, whose chain status and provider the follower keeps from the chain's events.

        Every `reconcile_interval_seconds` the reconciler reads a slice of them on chain (one call
        where the deployment has `getStatusesAndProviders`, else one JSON-RPC batch; the jobs read
        longest ago) and repairs the store where it differs, so the calls per pass stay bounded
        however many jobs are open; None when that read finds the chain unreachable.
        """
        if time.monotonic() - self._last_chain_read >= self.config.policy.reconcile_interval_seconds:
            jobs = open_jobs.jobs
            open_ids = {job.job_id for job in jobs}
            self._chain_read_at = {k: v for k, v in self._chain_read_at.items() if k in open_ids}
            due = set(reconcile_slice([job.job_id for job in jobs], self._chain_read_at, RECONCILE_SLICE))
            if not await self._read_chain_statuses([job for job in jobs if job.job_id in due]):
                return None
            self._last_chain_read = time.monotonic()
            self._chain_read_at.update(dict.fromkeys(due, self._last_chain_read))
            return self._open_jobs()
        return open_jobs

    async def _read_chain_statuses(self, jobs: list[JobRecord]) -> bool:
        assert self._contracts is not None
        try:
            views = await self._contracts.job_views([job.job_id for job in jobs])
        except Exception as exc:
            if not is_transient(exc):
                raise
            if self.health.chain_ok:
                log.error("chain unreachable: reports wait in the outbox", error=describe(exc))
            self.health.chain_ok = False
            self.health.problems["chain"] = describe(exc)
            return False
        if not self.health.chain_ok:
            log.info("chain reachable again")
        self.health.chain_ok = True
        self.health.problems.pop("chain", None)
        for job in jobs:
            view = views.get(job.job_id)
            if isinstance(view, JobReadError):
                # One job the chain cannot answer for must not hold up the others.
                log.warning("reading the job on chain failed", job_id=job.job_id, error=view.message)
                continue
            if view is None:
                continue
            status, provider = view
            ours = provider.lower() == self.provider.lower()
            if status != job.status:
                self.store.update_job(job.job_id, status=int(status))
                log.info(
                    "chain status changed", job_id=job.job_id, status=status.name, previous=job.status.name
                )
            if job.ours and not ours:
                self.store.update_job(job.job_id, ours=False)
        return True

    # -- one job ------------------------------------------------------------------------------

    def _presence(self, job: JobRecord, query: QueryResult | None) -> SlurmPresence:
        if query is None:
            return SlurmPresence.UNKNOWN
        seen = query.get(self.slurm_name(job))
        if seen is None and not (
            self._submitter is None or self._submitter.settled_before(job.job_id, self._query_asked_at)
        ):
            return SlurmPresence.UNKNOWN  # submitted while Slurm was being asked: not in its answer yet
        if seen is None:
            return SlurmPresence.ABSENT if query.not_found_is_certain else SlurmPresence.UNKNOWN
        if seen.state in WAITING_STATES:
            return SlurmPresence.WAITING
        if seen.state in ACTIVE_STATES:
            return SlurmPresence.ACTIVE
        return SlurmPresence.FINAL

    def _slurm_view(self, job: JobRecord, query: QueryResult | None) -> SlurmView:
        presence = self._presence(job, query)
        seen = None if query is None else query.get(self.slurm_name(job))
        if presence != SlurmPresence.FINAL or seen is None:
            return SlurmView(presence, elapsed_seconds=seen.elapsed_seconds if seen else 0)
        try:
            outcome = seen.chain_outcome(cancel_requested=job.cancel_requested)
        except UnknownSlurmState as exc:
            log.error("Slurm reported a state this supervisor does not know; waiting", error=str(exc))
            return SlurmView(SlurmPresence.UNKNOWN)
        return SlurmView(
            presence,
            outcome=outcome,
            elapsed_seconds=seen.elapsed_seconds,
            exit_code=seen.exit_code or 0,
            started=seen.start_time is not None or seen.elapsed_seconds > 0,
        )

    def _work_to_do(
        self, open_jobs: OpenJobs, query: QueryResult | None
    ) -> list[tuple[JobRecord, JobSituation, list[Action]]]:
        """The jobs this cycle acts on, with their situation and what was decided for them.

        A quiet job (nothing to decide, nothing reported, not running, its time limit as paid for)
        stays quiet until its record or its Slurm view changes: with thousands of jobs waiting in
        Slurm, those are looked at again only when they do (the store's cached records and the
        listing's memo keep them the same objects, so the look is mostly a comparison of identities).
        """
        work = []
        quiet: dict[str, tuple[JobRecord, ObservedJob]] = {}
        was_quiet = self._quiet
        lane = self._submitter
        observed = None if query is None else query.jobs
        for job, name in zip(open_jobs.jobs, open_jobs.names, strict=True):
            if lane is not None and lane.pending(job.job_id):
                continue
            seen = None if observed is None else observed.get(name)
            inputs = None if seen is None else (job, seen)
            if inputs is not None and was_quiet.get(job.job_id) == inputs:
                quiet[job.job_id] = inputs
                continue
            status = job.status
            situation = JobSituation(
                chain_status=status,
                ours=job.ours,
                cancel_requested=job.cancel_requested,
                submitted=job.slurm_job_id is not None,
                reported=job.last_reported_status,
                slurm=self._slurm_view(job, query),
            )
            decided = decide(situation)
            if (
                inputs is not None
                and not decided
                and job.last_reported_status is None
                and status != JobStatus.RUNNING
                and time_limit_shortfall(job, seen) == 0
            ):
                quiet[job.job_id] = inputs
                continue
            work.append((job, situation, decided))
        self._quiet = quiet
        return work

    async def _act(self, job: JobRecord, situation: JobSituation, decided: list[Action]) -> None:
        status = situation.chain_status
        actions = self._actions
        assert actions is not None
        seen = self._observed.get(self.slurm_name(job))
        for action in decided:
            if isinstance(action, Submit):
                assert self._submitter is not None
                async with self._submitter.guard(job.job_id) as current:
                    if current is not None:  # else the submitter lane has it, or has done it
                        await actions.submit(current)
            elif isinstance(action, Report):
                if action.status.is_cold:
                    crash_point("end_decided")
                actions.report(job, action)
            elif isinstance(action, CancelInSlurm):
                await actions.cancel_in_slurm(job, seen, action.reason)
            elif isinstance(action, Forget):
                self.store.update_job(job.job_id, closed=True, note=action.reason)
                log.info("job closed", reason=action.reason, chain_status=status.name)
        actions.retry_refused_reports(job, status)
        if status == JobStatus.RUNNING and situation.slurm.presence in (
            SlurmPresence.WAITING,
            SlurmPresence.ACTIVE,
        ):
            await actions.follow_time_limit(job, seen)
            if self.config.policy.auto_top_up:
                await actions.auto_top_up(job)
        elif status == JobStatus.SCHEDULED and situation.slurm.presence == SlurmPresence.WAITING:
            await actions.follow_time_limit(job, seen)
