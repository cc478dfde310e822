"""The supervisor daemon: wires the chain, the store, Slurm and the sbatch service around the decisions.

Three loops run side by side:
- the log follower records this provider's events in the store (claims, cancellations, top-ups,
  refusals) in the same local transaction as its cursor;
- the work loop, every few seconds or when woken, claims jobs within the policy's bound, fetches and
  submits claimed jobs, polls Slurm once for every tracked job, decides what each job needs
  (`supervisor.core.decisions`) and queues the reports in the outbox;
- the transaction sender delivers the outbox, one nonce owner for every write.

Nothing is acted on before it is in the store, and every action is idempotent, so a crash at any
point is repaired by the next start's reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog

from supervisor.chain.contracts import (
    Job,
    JobReadError,
    ProtocolContracts,
    ProviderRecord,
    TxCall,
    job_id_hex,
    status_report_key,
)
from supervisor.chain.events import ChainEvent
from supervisor.chain.follower import FollowerSettings, LogFollower
from supervisor.chain.keys import Signer, load_signer
from supervisor.chain.rpc import check_chain_id, connect_http, describe, is_transient
from supervisor.chain.sender import SenderSettings, TransactionSender
from supervisor.config import SupervisorConfig
from supervisor.core.decisions import (
    CancelInSlurm,
    Forget,
    JobSituation,
    Report,
    SlurmPresence,
    SlurmView,
    Submit,
    claims_to_send,
    decide,
    needs_delegated_top_up,
    remaining_minutes,
    wanted_time_limit,
)
from supervisor.core.policy import Node, Resources, label_problem, refusal_reason
from supervisor.core.slurm_states import ACTIVE_STATES, WAITING_STATES, UnknownSlurmState
from supervisor.core.status import JobStatus
from supervisor.faults import crash_point
from supervisor.job_logging import job_log_environment, with_job_environment
from supervisor.sbatch.client import SbatchClient, SbatchServiceUnavailable, ScriptRefused
from supervisor.slurm.backend import QueryResult, SlurmBackend
from supervisor.slurm.errors import JobAlreadySubmitted, SlurmError, SlurmUnavailable
from supervisor.slurm.factory import create_backend
from supervisor.slurm.folders import remove_ended_job_folders
from supervisor.slurm.job_folders import CleanupPlan, KnownJob, job_folder, output_file
from supervisor.slurm.models import JobSubmission, ObservedJob, PartitionHardware
from supervisor.store import JobRecord, OutboxState, Store

log = structlog.get_logger("supervisor")
T = TypeVar("T")

CLAIM_KIND = "claim_next_job"
#: Jobs acted on at once in a cycle (script fetches, submissions, cancellations run side by side).
JOB_CONCURRENCY = 8
DRAIN_TIMEOUT_S = 30.0
#: Seconds between two passes of the state file's retention.
PRUNE_INTERVAL_S = 3600.0
#: A status report the chain refused is sent again after this many seconds, doubling up to the max.
REPORT_RETRY_S = 5.0
REPORT_RETRY_MAX_S = 300.0


# ---------------------------------------------------------------------------------- events


class JobEventHandler:
    """Records this provider's chain events in the store; the work loop acts on what it records."""

    def __init__(self, on_claim_hint: Callable[[], None]) -> None:
        self._on_claim_hint = on_claim_hint

    def order_key(self, event: ChainEvent) -> str | None:
        """A job's events are handled in chain order (a parked claim holds back its top-ups)."""
        if event.name == "JobTransitionEvent":
            return None
        return job_id_hex(str(event.args.get("jobId", event.args.get("_jobId"))))

    def handle(self, event: ChainEvent, store: Store) -> None:
        args = event.args
        if event.name == "JobTransitionEvent":
            self._transition(event, store)
            return
        job_id = job_id_hex(str(args.get("jobId", args.get("_jobId"))))
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            if event.name == "ClaimJobEvent":
                crash_point("claim_recorded")
                definition = dict(args["jobDefinition"])
                max_minutes = int(args["maxDurationMinute"])
                again = store.get_job(job_id) is not None
                if store.record_claim(
                    job_id,
                    customer=str(args["customerAddr"]),
                    max_duration_minute=max_minutes,
                    definition=definition,
                    claimed_block=event.block_number,
                    lookup_margin_s=SINCE_MARGIN_S,
                ):
                    log.info(
                        "job claimed",
                        customer=args["customerAddr"],
                        max_duration_minute=max_minutes,
                        claimed_again=again,
                    )
            elif event.name == "ClaimNextCancellingJobEvent":
                if store.get_job(job_id) is not None:
                    store.update_job(job_id, cancel_requested=True)
                log.info("customer asked to cancel the job")
            elif event.name == "ClaimNextTopUpJobEvent":
                minutes = int(args["maxDurationMinute"])
                if store.get_job(job_id) is not None:
                    store.add_extra_minutes(job_id, minutes)
                log.info("job topped up", extra_minutes=minutes)
            elif event.name == "JobRefusedEvent":
                if store.get_job(job_id) is not None:
                    store.update_job(job_id, ours=False)
                log.info("job handed back to the meta-scheduler")

    def _transition(self, event: ChainEvent, store: Store) -> None:
        """A job's status changed on chain: a tracked job's record follows; META_SCHEDULED wakes claims."""
        to = JobStatus(int(event.args["_to"]))
        if to == JobStatus.META_SCHEDULED:
            self._on_claim_hint()
        job_id = job_id_hex(str(event.args["_jobId"]))
        record = store.get_job(job_id)
        if record is None or record.closed or record.status == to:
            return
        store.update_job(job_id, status=int(to))
        log.info("chain status changed", job_id=job_id, status=to.name, previous=record.status.name)

    def undo(self, event: ChainEvent, store: Store) -> None:
        """The event's block left the chain: take back what `handle` recorded."""
        args = event.args
        if event.name == "JobTransitionEvent":
            record = store.get_job(job_id_hex(str(args["_jobId"])))
            if record is not None and not record.closed and record.status == int(args["_to"]):
                store.update_job(record.job_id, status=int(args["_from"]))
            return
        job_id = job_id_hex(str(args.get("jobId", args.get("_jobId"))))
        record = store.get_job(job_id)
        if record is None:
            return
        if event.name == "ClaimJobEvent" and record.slurm_job_id is None:
            store.delete_job(job_id)
        elif event.name == "ClaimNextCancellingJobEvent":
            store.update_job(job_id, cancel_requested=False)
        elif event.name == "ClaimNextTopUpJobEvent":
            store.add_extra_minutes(job_id, -int(args["maxDurationMinute"]))
        elif event.name == "JobRefusedEvent":
            store.update_job(job_id, ours=True)
        log.warning("event undone after a reorganisation", job_id=job_id, event_name=event.name)


# ---------------------------------------------------------------------------------- the daemon

#: Slurm records submission times to the second: look a little before the claim was recorded.
SINCE_MARGIN_S = 2.0


def _lookup_since(job: JobRecord) -> float:
    """The earliest submission time of a Slurm job that can belong to the job's current attempt."""
    if job.lookup_since is not None:
        return job.lookup_since
    return (job.claimed_at if job.claimed_at is not None else job.created_at) - SINCE_MARGIN_S


def _reclaimed(job: JobRecord) -> bool:
    """A job claimed again after an attempt that had a Slurm job: its look-ups start after its claim."""
    return job.lookup_since is not None and job.claimed_at is not None and job.lookup_since > job.claimed_at


def _since(jobs: list[JobRecord]) -> datetime | None:
    """The earliest moment a Slurm job of these jobs can have been submitted: their current claim.

    Job ids repeat across deployments (a test chain, a second grid on the same cluster), and a job
    handed back and claimed again has the Slurm job of its earlier attempt: older Slurm jobs with the
    same name belong to other attempts and must not be taken for these.
    """
    if not jobs:
        return None
    return datetime.fromtimestamp(min(_lookup_since(job) for job in jobs), tz=UTC)


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


@dataclass
class Health:
    """What the daemon knows about its dependencies, for logs, status and metrics."""

    chain_ok: bool = False
    slurm_ok: bool = False
    sbatch_ok: bool = True
    registered: bool = False
    problems: dict[str, str] = field(default_factory=dict)


class Daemon:
    """One provider's supervisor. `run()` until `stop()` (SIGTERM), then drain and return."""

    def __init__(self, config: SupervisorConfig, listeners: list[DaemonListener] | None = None) -> None:
        self.config = config
        self.listeners = list(listeners or [])
        self.health = Health()
        self.ready = False
        self.cycles = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._claiming = True
        self._store: Store | None = None
        self._signer: Signer | None = None
        self._contracts: ProtocolContracts | None = None
        self._sender: TransactionSender | None = None
        self._follower: LogFollower | None = None
        self._slurm: SlurmBackend | None = None
        self._sbatch: SbatchClient | None = None
        self._hardware: PartitionHardware | None = None
        self._prices: tuple[int, int, int] | None = None
        self._observed: dict[str, ObservedJob] = {}
        self._last_reconcile = 0.0
        self._last_prune = 0.0
        self._folders_said: set[str] = set()
        self._last_chain_read = 0.0
        self._tasks: list[asyncio.Task[Any]] = []

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

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    @property
    def provider(self) -> str:
        assert self._signer is not None
        return self._signer.address

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            if not await self.start():
                return
            self._tasks = [
                asyncio.create_task(self._follower_loop(), name="follower"),
                asyncio.create_task(self._work_loop(), name="work"),
                asyncio.create_task(self._register_when_possible(), name="register"),
            ]
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def _until_ready(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """Retry `attempt` with backoff until it succeeds or the daemon stops; says once what it waits for."""
        delay, said = 0.5, False
        while not self._stop.is_set():
            try:
                result = await attempt()
                if said:
                    log.info(f"{what}: ready")
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not said:
                    log.warning(f"waiting for {what}", error=describe(exc))
                    said = True
                for listener in self.listeners:
                    listener.waiting(self, what)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 15.0)
        return None

    async def start(self) -> bool:
        """Open the store, connect the chain, start the sender: what `run()` does before its loops.

        With `start()`, `follower.poll_once()`, `cycle()` and `shutdown()` a caller drives the daemon
        one step at a time (the crash and recovery tests do); False when stopped while waiting.
        """
        cfg = self.config
        self._store = Store.open(cfg.store.path)
        self._signer = load_signer(cfg.key.file, cfg.key.password_file)
        log.info("supervisor starting", provider=self.provider, store=str(cfg.store.path))
        w3 = connect_http(cfg.chain.rpc_url)

        async def discover() -> tuple[int, ProtocolContracts]:
            chain_id = await check_chain_id(w3, cfg.chain.chain_id)
            return chain_id, await ProtocolContracts.discover(w3, cfg.chain.meta_scheduler)

        found = await self._until_ready("the chain (RPC and contracts)", discover)
        if found is None:
            return False
        chain_id, contracts = found
        self._contracts = contracts
        self.store.bind_deployment(chain_id, contracts.meta_scheduler.address)
        self.health.chain_ok = True
        sender_settings = SenderSettings(
            chain_id=cfg.chain.chain_id,
            receipt_deadline_s=cfg.chain.receipt_deadline_seconds,
            max_fee_per_gas_cap=None
            if cfg.chain.max_fee_per_gas_gwei is None
            else int(cfg.chain.max_fee_per_gas_gwei * 10**9),
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
            JobEventHandler(self._on_claim_hint),
            FollowerSettings(
                start_block=cfg.chain.start_block,
                confirmations=cfg.chain.confirmations,
                poll_interval_s=cfg.chain.poll_interval_seconds,
                chain_id=cfg.chain.chain_id,
            ),
            ws_url=cfg.chain.ws_url,
        )
        self._slurm = create_backend(cfg.slurm)
        self._sbatch = SbatchClient.from_settings(cfg.sbatch, self._signer)
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
        if self._slurm is not None:
            await self._slurm.close()
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

    def _on_claim_hint(self) -> None:
        """A job was meta-scheduled somewhere: look for claimable jobs now rather than next cycle."""
        self._wake.set()

    async def _follower_loop(self) -> None:
        assert self._follower is not None
        await self._follower.run()

    # -- registration -------------------------------------------------------------------------

    async def _register_when_possible(self) -> None:
        registration = self.config.registration
        await self._until_ready("Slurm's partition description", self._describe_partition)
        if registration is None or not registration.enabled or self._stop.is_set():
            return
        await self._until_ready("the provider registration", self._register)

    async def _describe_partition(self) -> PartitionHardware:
        assert self._slurm is not None
        self._hardware = await self._slurm.describe_partition()
        return self._hardware

    async def _register(self) -> bool:
        assert self._contracts is not None and self._sender is not None and self._hardware is not None
        registration = self.config.registration
        assert registration is not None
        hw = self._hardware
        gpu, cpu, mem = registration.prices.as_wei()
        desired = ProviderRecord(
            nodes=hw.node_count,
            gpus_per_node=tuple(hw.gpus_per_node),
            cpus_per_node=tuple(hw.cpus_per_node),
            mem_per_node=tuple(hw.memory_mb_per_node),
            gpu_price_per_min=gpu,
            cpu_price_per_min=cpu,
            mem_price_per_min=mem,
            labels=tuple(sorted(registration.labels.items())),
        )
        approved = await self._contracts.provider_record(self.provider)
        waiting = await self._contracts.provider_record(self.provider, waiting=True)
        if approved.address and approved.same_offer(desired):
            log.info("registration unchanged", nodes=hw.node_count, approved=True)
            self.health.registered = True
            return True
        if waiting.address and waiting.same_offer(desired):
            log.info("registration unchanged, waiting for approval", nodes=hw.node_count)
            return True
        await self._pay_registration_tax()
        outcome = await self._sender.wait(self._registration_action(desired))
        if not outcome.delivered:
            raise RuntimeError(f"registration failed: {outcome.error}")
        log.info(
            "registered with the grid",
            nodes=hw.node_count,
            cpus_per_node=list(hw.cpus_per_node),
            gpus_per_node=list(hw.gpus_per_node),
            mem_per_node=list(hw.memory_mb_per_node),
            tx_hash=outcome.tx_hash,
        )
        self.health.registered = True
        return True

    def _registration_action(self, desired: ProviderRecord) -> int:
        """The outbox action registering `desired`: one row per attempt at one offer, however often a
        failing registration is retried (a failed row is queued again rather than a new one added)."""
        assert self._contracts is not None and self._sender is not None
        prefix = "register:" + hashlib.sha256(repr(desired.offer()).encode()).hexdigest()[:32] + ":"
        previous = self.store.latest_action("register", prefix)
        if previous is not None and previous.state in (OutboxState.QUEUED, OutboxState.SENT):
            return previous.id
        if previous is not None and previous.state == OutboxState.FAILED and not previous.already_done:
            self.store.retry_failed(previous.id, f"registering again after: {previous.error}")
            self._sender.wake()
            return previous.id
        call = dataclasses.replace(self._contracts.register(desired), dedup_key=f"{prefix}{time.time_ns()}")
        return self._sender.submit_call(call)

    async def _pay_registration_tax(self) -> None:
        """Approve ProviderManager for the grid's registration tax, which `register` then takes."""
        assert self._contracts is not None and self._sender is not None
        tax, token = await self._contracts.registration_tax()
        if tax == 0:
            return
        if token is None:
            raise RuntimeError(
                f"the grid charges a registration tax of {tax} credit-wei and does not say in which token"
            )
        spender = self._contracts.provider_manager.address
        if await self._contracts.allowance(token, self.provider, spender) >= tax:
            return
        outcome = await self._sender.wait(
            self._sender.submit_call(self._contracts.approve(token, spender, tax))
        )
        if not outcome.delivered:
            raise RuntimeError(f"approving the registration tax failed: {outcome.error}")
        log.info("registration tax approved", tax_wei=tax, token=token, tx_hash=outcome.tx_hash)

    # -- the work loop ------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        period = self.config.policy.slurm_poll_seconds
        while not self._stop.is_set():
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad cycle never ends the daemon
                log.exception("work cycle failed, will retry", error=describe(exc))
            self.cycles += 1
            self._announce()
            self._wake.clear()
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
        jobs = self.store.open_jobs()
        query = await self._query_slurm(jobs)
        if query is not None:
            self._record_slurm_ids(jobs, query)
            jobs = self.store.open_jobs()
        chain = await self._chain_views(jobs)
        if chain is None:
            return
        if self._claiming:
            try:
                await self._claim(jobs, query)
                await self._claim_queues()
            except Exception as exc:  # the reports below must not wait for a claim that failed
                log.warning("claiming failed, will retry next cycle", error=describe(exc))
        if query is not None:
            await self._cancel_orphans()
        limit = asyncio.Semaphore(JOB_CONCURRENCY)

        async def act(job: JobRecord) -> None:
            async with limit:
                with structlog.contextvars.bound_contextvars(job_id=job.job_id):
                    try:
                        await self._act(job, chain.get(job.job_id), query)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.exception("acting on the job failed, will retry", error=describe(exc))

        await asyncio.gather(*(act(job) for job in jobs))
        if time.monotonic() - self._last_reconcile > self.config.policy.reconcile_interval_seconds:
            await self._refresh_delegation(jobs)
            self._last_reconcile = time.monotonic()
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
            known[record.job_id] = KnownJob(user, record.updated_at if record.closed else None)
        try:
            return await remove_ended_job_folders(
                self._slurm,
                str(self.config.policy.jobs_root),
                known,
                now=time.time(),
                retention_seconds=self.config.policy.job_folder_retention_days * 86400,
                said=self._folders_said,
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

    async def _query_slurm(self, jobs: list[JobRecord]) -> QueryResult | None:
        assert self._slurm is not None
        try:
            if jobs:
                result = await self._query_in_groups(jobs)
            else:
                # Nothing to look up: ask Slurm for the partition instead, so that no job is claimed
                # while Slurm cannot take it.
                await self._describe_partition()
                result = QueryResult({}, frozenset(), True, True)
        except SlurmError as exc:
            if self.health.slurm_ok or "slurm" not in self.health.problems:
                log.error("Slurm unavailable: jobs wait until it answers", error=str(exc))
            self.health.slurm_ok = False
            self.health.problems["slurm"] = str(exc)
            return None
        if not self.health.slurm_ok and "slurm" in self.health.problems:
            log.info("Slurm answers again")
        self.health.slurm_ok = True
        self.health.problems.pop("slurm", None)
        self._observed = dict(result.jobs)
        return result

    async def _query_in_groups(self, jobs: list[JobRecord]) -> QueryResult:
        """One query for all jobs, except re-claimed ones: each of those has a later bound of its own."""
        assert self._slurm is not None
        regular = [job for job in jobs if not _reclaimed(job)]
        results = []
        if regular:
            results.append(await self._slurm.query([job.job_id for job in regular], since=_since(regular)))
        for job in jobs:
            if _reclaimed(job):
                results.append(await self._slurm.query([job.job_id], since=_since([job])))
        return QueryResult(
            jobs={name: seen for result in results for name, seen in result.jobs.items()},
            not_found=frozenset().union(*(result.not_found for result in results)),
            not_found_is_certain=all(result.not_found_is_certain for result in results),
            accounting_available=all(result.accounting_available for result in results),
        )

    def _record_slurm_ids(self, jobs: list[JobRecord], query: QueryResult) -> None:
        for job in jobs:
            seen = query.get(job.job_id)
            if seen is not None and job.slurm_job_id != seen.slurm_job_id:
                self.store.update_job(job.job_id, slurm_job_id=seen.slurm_job_id)

    async def _chain_views(self, jobs: list[JobRecord]) -> dict[str, tuple[JobStatus, bool]] | None:
        """(status, ours) of every open job, as the follower keeps them from the chain's events.

        Every `reconcile_interval_seconds` the chain is read for all of them, in JSON-RPC batches, and
        the store repaired where it differs; None when that read finds the chain unreachable.
        """
        if time.monotonic() - self._last_chain_read >= self.config.policy.reconcile_interval_seconds:
            if not await self._read_chain_statuses(jobs):
                return None
            self._last_chain_read = time.monotonic()
            jobs = self.store.open_jobs()
        return {job.job_id: (job.status, job.ours) for job in jobs}

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

    async def _cancel_orphans(self) -> None:
        """Cancel the Slurm jobs of earlier attempts of re-claimed jobs (harmless when they ended)."""
        assert self._slurm is not None
        for slurm_id, job_id in self.store.orphan_slurm_jobs():
            try:
                await self._slurm.cancel(slurm_id)
            except SlurmError as exc:
                log.warning("cancelling an earlier attempt's Slurm job failed", job_id=job_id, error=str(exc))
                continue
            self.store.forget_orphan(slurm_id)
            log.info("earlier attempt's Slurm job cancelled", job_id=job_id, slurm_job_id=slurm_id)

    # -- claiming -----------------------------------------------------------------------------

    async def _claim(self, jobs: list[JobRecord], query: QueryResult | None) -> None:
        assert self._contracts is not None and self._sender is not None
        if query is None:
            return  # without Slurm, do not take more jobs
        held = sum(
            1
            for job in jobs
            if job.ours
            and job.status == JobStatus.SCHEDULED
            and (job.slurm_job_id is None or self._presence(job, query) == SlurmPresence.WAITING)
        )
        in_flight = self.store.open_actions(CLAIM_KIND)
        wanted = claims_to_send(held=held, in_flight=in_flight, limit=self.config.policy.max_queued_jobs)
        if wanted == 0:
            return
        if not await self._contracts.has_next_claimable_job(self.provider):
            return
        wanted = await self._contracts.claimable_jobs(self.provider, wanted)
        if wanted == 0:
            return
        for _ in range(wanted):
            self._sender.submit_call(self._contracts.claim_next_job())
        log.info("claiming jobs", count=wanted, held=held)
        if self._follower is not None:
            self._follower.wake()

    async def _claim_queues(self) -> None:
        """Cancellation and top-up requests wait in queues of their own: claim them when there are some."""
        contracts, sender = self._contracts, self._sender
        assert contracts is not None and sender is not None
        if not self.store.open_actions("claim_next_cancelling_job") and await contracts.has_cancelling_job(
            self.provider
        ):
            sender.submit_call(contracts.claim_next_cancelling_job())
        if not self.store.open_actions("claim_next_top_up_job") and await contracts.has_top_up_job(
            self.provider
        ):
            sender.submit_call(contracts.claim_next_top_up_job())

    # -- one job ------------------------------------------------------------------------------

    def _presence(self, job: JobRecord, query: QueryResult | None) -> SlurmPresence:
        if query is None:
            return SlurmPresence.UNKNOWN
        seen = query.get(job.job_id)
        if seen is None:
            return SlurmPresence.ABSENT if query.not_found_is_certain else SlurmPresence.UNKNOWN
        if seen.state in WAITING_STATES:
            return SlurmPresence.WAITING
        if seen.state in ACTIVE_STATES:
            return SlurmPresence.ACTIVE
        return SlurmPresence.FINAL

    def _slurm_view(self, job: JobRecord, query: QueryResult | None) -> SlurmView:
        presence = self._presence(job, query)
        seen = None if query is None else query.get(job.job_id)
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

    async def _act(
        self, job: JobRecord, chain: tuple[JobStatus, bool] | None, query: QueryResult | None
    ) -> None:
        if chain is None:
            return
        status, ours = chain
        situation = JobSituation(
            chain_status=status,
            ours=ours and job.ours,
            cancel_requested=job.cancel_requested,
            submitted=job.slurm_job_id is not None,
            reported=job.last_reported_status,
            slurm=self._slurm_view(job, query),
        )
        for action in decide(situation):
            if isinstance(action, Submit):
                await self._submit(job)
            elif isinstance(action, Report):
                if action.status.is_cold:
                    crash_point("end_decided")
                self._report(job, action)
            elif isinstance(action, CancelInSlurm):
                await self._cancel_in_slurm(job, action.reason)
            elif isinstance(action, Forget):
                self.store.update_job(job.job_id, closed=True, note=action.reason)
                log.info("job closed", reason=action.reason, chain_status=status.name)
        self._retry_refused_reports(job, status)
        if status == JobStatus.RUNNING and situation.slurm.presence in (
            SlurmPresence.WAITING,
            SlurmPresence.ACTIVE,
        ):
            await self._follow_time_limit(job)
            if self.config.policy.auto_top_up:
                await self._auto_top_up(job)
        elif status == JobStatus.SCHEDULED and situation.slurm.presence == SlurmPresence.WAITING:
            await self._follow_time_limit(job)

    def _report(self, job: JobRecord, report: Report) -> None:
        assert self._contracts is not None and self._sender is not None
        call = self._contracts.provider_set_job_status(
            job.job_id,
            report.status,
            duration_minute=report.duration_minute,
            last_error=report.last_error[:1000],
            exit_code=report.exit_code,
            attempt=job.claimed_block or 0,
        )
        self._sender.submit_call(call)
        self.store.update_job(job.job_id, last_reported_status=int(report.status))
        log.info(
            "status reported",
            status=report.status.name,
            duration_minute=report.duration_minute,
            exit_code=report.exit_code,
            last_error=report.last_error or None,
        )

    def _retry_refused_reports(self, job: JobRecord, chain_status: JobStatus) -> None:
        """Send again a report the chain refused for a passing reason (a temporary ban, say).

        A refused report is not "already done": until the chain takes it, or the job is settled
        some other way, the provider would go unpaid. Retries back off up to REPORT_RETRY_MAX_S.
        """
        if chain_status.is_cold or job.last_reported_status is None:
            return
        for status in dict.fromkeys((JobStatus.RUNNING, job.last_reported_status)):
            if status == chain_status:
                continue
            action = self.store.action_by_dedup_key(
                status_report_key(job.job_id, job.claimed_block or 0, status)
            )
            if action is None or action.state != OutboxState.FAILED or action.already_done:
                continue
            wait = min(REPORT_RETRY_S * 2**action.retries, REPORT_RETRY_MAX_S)
            if time.time() - action.updated_at < wait:
                continue
            self.store.retry_failed(action.id, f"sent again after: {action.error}")
            assert self._sender is not None
            self._sender.wake()
            log.warning(
                "status report refused by the chain, sending it again",
                status=status.name,
                error=action.error,
                retries=action.retries + 1,
            )

    def _refuse(self, job: JobRecord, reason: str) -> None:
        assert self._contracts is not None and self._sender is not None
        self._sender.submit_call(self._contracts.refuse_job(job.job_id, attempt=job.claimed_block or 0))
        self.store.update_job(job.job_id, ours=False, note=f"refused: {reason}")
        log.warning("job refused", reason=reason)

    def _fail(self, job: JobRecord, reason: str) -> None:
        self._report(job, Report(JobStatus.FAILED, 0, reason, 0))

    async def _submit(self, job: JobRecord) -> None:
        assert self._sbatch is not None and self._slurm is not None and self._contracts is not None
        definition = job.definition or {}
        customer = job.customer or ""
        if not job.max_duration_minute:
            self._fail(job, "the locked credits buy less than one minute on this provider")
            return
        if self._hardware is None:
            try:
                await self._describe_partition()
            except SlurmError as exc:
                log.error("cannot describe the partition yet: submission waits", error=str(exc))
                return
        assert self._hardware is not None
        resources = Resources(
            ntasks=int(definition.get("ntasks", 0)),
            cpus_per_task=int(definition.get("cpusPerTask", 0)),
            mem_per_cpu_mb=int(definition.get("memPerCpu", 0)),
            gpus=int(definition.get("gpus", 0)),
        )
        nodes = [Node(n.cpus, n.memory_mb, n.gpus) for n in self._hardware.nodes]
        policy = self.config.policy
        reason = label_problem(definition) or refusal_reason(
            resources, customer, nodes, denied_customers=policy.denied_customers
        )
        if reason is not None:
            self._refuse(job, reason)
            return
        chain_job = await self._contracts.get_job(job.job_id)
        if chain_job.delegate_spending_authority != job.delegate_top_up:
            self.store.update_job(job.job_id, delegate_top_up=chain_job.delegate_spending_authority)
        key = chain_job.definition.batch_location_hash
        try:
            fetched = await self._sbatch.fetch(job.job_id, chain_job.customer, key)
        except ScriptRefused as exc:
            self._fail(job, f"batch script unusable: {exc}")
            return
        except SbatchServiceUnavailable as exc:
            if self.health.sbatch_ok:
                log.error("sbatch service unavailable: submission waits", error=str(exc))
            self.health.sbatch_ok = False
            self.health.problems["sbatch"] = str(exc)
            return
        self.health.sbatch_ok = True
        self.health.problems.pop("sbatch", None)
        reason = refusal_reason(
            resources, customer, nodes, denied_images=policy.denied_images, script=fetched.script
        )
        if reason is not None:
            self._refuse(job, reason)
            return
        try:
            folder = job_folder(policy.jobs_root, job.job_id)
            user = self.config.slurm.users.user_for(customer)
            assert self._signer is not None
            log_environment = job_log_environment(
                job.job_id,
                chain_job.customer,
                fetched.grid_logger_url,
                self.config.logger,
                self._signer,
                self.config.chain.meta_scheduler,
            )
            submission = JobSubmission(
                name=job.job_id,
                script=with_job_environment(fetched.script, log_environment),
                unix_user=user,
                workdir=str(folder),
                output_path=str(output_file(folder)),
                private_workdir=True,
                time_limit_minutes=wanted_time_limit(
                    max_duration_minute=job.max_duration_minute, extra_minutes=job.extra_minutes
                ),
                ntasks=resources.ntasks,
                cpus_per_task=resources.cpus_per_task,
                mem_per_cpu_mb=resources.mem_per_cpu_mb,
                gpus=resources.gpus,
            )
        except (ValueError, SlurmError) as exc:
            self._refuse(job, str(exc))
            return
        early = _lookup_since(job) - time.time()
        if early > 0:  # a re-claim: its Slurm job must be submitted after the bound of its look-ups
            await asyncio.sleep(early)
        try:
            slurm_id = await self._slurm.submit(submission, since=_since([job]))
        except JobAlreadySubmitted as exc:
            slurm_id = exc.slurm_job_id
            log.info("job already in Slurm, not submitted again", slurm_job_id=slurm_id)
        except SlurmUnavailable as exc:
            log.error("Slurm unavailable: submission waits", error=str(exc))
            return
        except SlurmError as exc:
            # Only a definite refusal of this job refuses it on chain; any other failure is retried.
            if not exc.refuses_job:
                log.error("Slurm submission failed, not a refusal: submission waits", error=str(exc))
                return
            self._refuse(job, f"Slurm refused the submission: {exc}")
            return
        crash_point("slurm_submitted")
        self.store.update_job(job.job_id, slurm_job_id=slurm_id)
        log.info(
            "job submitted to Slurm",
            slurm_job_id=slurm_id,
            unix_user=user,
            time_limit_minutes=submission.time_limit_minutes,
        )

    async def _refresh_delegation(self, jobs: list[JobRecord]) -> None:
        """Customers may grant or withdraw delegated spending at any time: re-read it now and then."""
        assert self._contracts is not None
        for job in jobs:
            if job.status != JobStatus.RUNNING or not job.ours:
                continue
            try:
                chain_job = await self._contracts.get_job(job.job_id)
            except Exception as exc:
                log.warning("reading the job failed, will retry", job_id=job.job_id, error=describe(exc))
                return
            if chain_job.delegate_spending_authority != job.delegate_top_up:
                self.store.update_job(job.job_id, delegate_top_up=chain_job.delegate_spending_authority)

    async def _cancel_in_slurm(self, job: JobRecord, reason: str) -> None:
        assert self._slurm is not None
        seen = self._observed.get(job.job_id)
        slurm_id = seen.slurm_job_id if seen is not None else job.slurm_job_id
        if slurm_id is None:
            return
        try:
            await self._slurm.cancel(slurm_id)
        except SlurmError as exc:
            log.error("cancelling in Slurm failed, will retry", error=str(exc), slurm_job_id=slurm_id)
            return
        log.info("job cancelled in Slurm", reason=reason, slurm_job_id=slurm_id)

    async def _follow_time_limit(self, job: JobRecord) -> None:
        """The Slurm time limit follows the minutes paid for: the claim's duration plus every top-up."""
        assert self._slurm is not None
        seen = self._observed.get(job.job_id)
        if seen is None or seen.time_limit_minutes is None or job.max_duration_minute is None:
            return
        wanted = wanted_time_limit(
            max_duration_minute=job.max_duration_minute, extra_minutes=job.extra_minutes
        )
        if seen.time_limit_minutes >= wanted:
            return
        extra = wanted - seen.time_limit_minutes
        try:
            await self._slurm.extend_time_limit(seen.slurm_job_id, extra)
        except SlurmError as exc:
            log.error("raising the time limit failed, will retry", error=str(exc))
            return
        log.info("time limit raised", extra_minutes=extra, time_limit_minutes=wanted)

    async def _auto_top_up(self, job: JobRecord) -> None:
        """Adds a slice from the customer's allowance when a delegated job's time runs low."""
        assert self._contracts is not None and self._sender is not None
        if not job.delegate_top_up or self.store.open_actions("top_up_job_delegate", job.job_id):
            return
        chain_job: Job = await self._contracts.get_job(job.job_id)
        if not chain_job.delegate_spending_authority:
            self.store.update_job(job.job_id, delegate_top_up=False)
            return
        if chain_job.status != JobStatus.RUNNING:
            return
        if self._prices is None:
            prices = await self._contracts.provider_prices(self.provider)
            self._prices = (prices.gpu_price_per_min, prices.cpu_price_per_min, prices.mem_price_per_min)
        gpu, cpu, mem = self._prices
        d = chain_job.definition
        per_minute = d.ntasks * (d.cpus_per_task * cpu + d.cpus_per_task * d.mem_per_cpu * mem) + d.gpus * gpu
        now = await self._contracts.latest_timestamp()
        left = remaining_minutes(
            max_cost=chain_job.max_cost, credits_per_minute=per_minute, elapsed_seconds=now - chain_job.start
        )
        slice_minutes = await self._contracts.top_up_slice_minutes()
        if not needs_delegated_top_up(remaining_minutes=left, slice_minutes=slice_minutes):
            return
        call: TxCall = self._contracts.top_up_job_delegate(job.job_id, 0)
        call = dataclasses.replace(call, dedup_key=f"topup:{job.job_id}:{chain_job.max_cost}:{now // 60}")
        self._sender.submit_call(call)
        log.info("delegated top-up requested", remaining_minutes=left, slice_minutes=slice_minutes)
