"""Actions: what the decisions of `supervisor.core.decisions` turn into, one job at a time.

Each executor does one thing to the outside world for one job (fetch and submit its script, queue
a report or a refusal in the outbox, cancel it in Slurm, raise its time limit, top it up from the
customer's allowance) and records what it did in the store. Submission comes in phases (prepare,
begin, to Slurm, submitted) so that the submitter lane can run a group of fresh claims through them
with one durable write per phase. All of them are idempotent: an action
repeated after a crash finds its earlier effect (a Slurm job of that name, an outbox row of that
key) instead of doing it twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from grid_protocol.jobs import Job, JobStatus
from grid_protocol.pricing import ProviderPrices, credits_per_minute, remaining_minutes
from supervisor.chain.contracts import ProtocolContracts, TxCall, status_report_key
from supervisor.chain.keys import Signer
from supervisor.chain.rpc import describe
from supervisor.chain.sender import TransactionSender
from supervisor.config import SupervisorConfig
from supervisor.core.decisions import Report, needs_delegated_top_up, wanted_time_limit
from supervisor.core.policy import Node, Resources, label_problem, refusal_reason
from supervisor.faults import crash_point
from supervisor.intake import SINCE_MARGIN_S
from supervisor.job_logging import job_log_environment, with_job_environment
from supervisor.sbatch.client import FetchedScript, SbatchClient, ScriptError, ScriptRefused, WantedScript
from supervisor.slurm.backend import SlurmBackend
from supervisor.slurm.errors import JobAlreadySubmitted, SlurmError, SlurmUnavailable
from supervisor.slurm.job_folders import job_folder, output_file
from supervisor.slurm.models import JobSubmission, ObservedJob, PartitionHardware
from supervisor.slurm.naming import SlurmNamespace
from supervisor.store import JobRecord, OutboxState, Store

log = structlog.get_logger("supervisor")

#: A status report the chain refused is sent again after this many seconds, doubling up to the max.
REPORT_RETRY_S = 5.0
REPORT_RETRY_MAX_S = 300.0
#: sbatch processes the submitter's groups run at once (Slurm's controller answers a few at a time).
SBATCH_CONCURRENCY = 8


@dataclass(frozen=True)
class PreparedSubmission:
    """A job admitted with its script, ready for sbatch; `look_up`: a submission of it may already
    have reached Slurm (its intent was recorded before)."""

    job: JobRecord
    submission: JobSubmission
    look_up: bool


def lookup_since(job: JobRecord) -> float:
    """The earliest submission time of a Slurm job that can belong to the job's current attempt."""
    if job.lookup_since is not None:
        return job.lookup_since
    return (job.claimed_at if job.claimed_at is not None else job.created_at) - SINCE_MARGIN_S


def slurm_name(job: JobRecord, names: SlurmNamespace) -> str:
    """The name of the job's Slurm job: the one its submission was begun under; a job submitted
    before names carried their deployment is known by its bare id."""
    if job.slurm_name is not None:
        return job.slurm_name
    if job.submit_intent_at is not None or job.slurm_job_id is not None:
        return job.job_id
    return names.name(job.job_id)


def reclaimed(job: JobRecord) -> bool:
    """A job claimed again after an attempt that had a Slurm job: its look-ups start after its claim."""
    return job.lookup_since is not None and job.claimed_at is not None and job.lookup_since > job.claimed_at


def since(jobs: list[JobRecord]) -> datetime | None:
    """The earliest moment a Slurm job of these jobs can have been submitted: their current claim.

    Job ids repeat across deployments (a test chain, a second grid on the same cluster), and a job
    handed back and claimed again has the Slurm job of its earlier attempt: older Slurm jobs with the
    same name belong to other attempts and must not be taken for these.
    """
    if not jobs:
        return None
    return datetime.fromtimestamp(min(lookup_since(job) for job in jobs), tz=UTC)


@dataclass
class Health:
    """What the daemon knows about its dependencies, for logs, status and metrics."""

    chain_ok: bool = False
    slurm_ok: bool = False
    sbatch_ok: bool = True
    registered: bool = False
    problems: dict[str, str] = field(default_factory=dict)


@dataclass
class Partition:
    """The Slurm partition's hardware, read once and kept (registration and admission use it)."""

    slurm: SlurmBackend
    hardware: PartitionHardware | None = None

    async def describe(self) -> PartitionHardware:
        self.hardware = await self.slurm.describe_partition()
        return self.hardware


def time_limit_shortfall(job: JobRecord, seen: ObservedJob | None) -> int:
    """Minutes the Slurm time limit lacks of what was paid for (the claim's duration plus every
    top-up); 0 when it has them, or when either side is not known."""
    if seen is None or seen.time_limit_minutes is None or job.max_duration_minute is None:
        return 0
    wanted = wanted_time_limit(max_duration_minute=job.max_duration_minute, extra_minutes=job.extra_minutes)
    return max(0, wanted - seen.time_limit_minutes)


@dataclass
class JobActions:
    """The executors of the decisions, with what they act through."""

    config: SupervisorConfig
    store: Store
    contracts: ProtocolContracts
    sender: TransactionSender
    slurm: SlurmBackend
    sbatch: SbatchClient
    signer: Signer
    partition: Partition
    health: Health
    names: SlurmNamespace
    _prices: ProviderPrices | None = None
    #: Jobs whose delegated spending was read since the daemon started (each once, then periodically).
    _delegation_read: set[str] = field(default_factory=set)
    #: sbatch processes of the submitter's groups at once, over every group under way.
    _sbatch_room: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(SBATCH_CONCURRENCY))

    @property
    def provider(self) -> str:
        return self.signer.address

    # -- the outbox ---------------------------------------------------------------------------

    def report(self, job: JobRecord, report: Report) -> None:
        call = self.contracts.provider_set_job_status(
            job.job_id,
            report.status,
            duration_minute=report.duration_minute,
            last_error=report.last_error[:1000],
            exit_code=report.exit_code,
            attempt=job.claimed_block or 0,
        )
        with self.store.transaction():  # the outbox row and the job's note of it, together
            self.sender.submit_call(call)
            self.store.update_job(job.job_id, last_reported_status=int(report.status))
        log.info(
            "status reported",
            status=report.status.name,
            duration_minute=report.duration_minute,
            exit_code=report.exit_code,
            last_error=report.last_error or None,
        )

    def retry_refused_reports(self, job: JobRecord, chain_status: JobStatus) -> None:
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
            self.sender.wake()
            log.warning(
                "status report refused by the chain, sending it again",
                status=status.name,
                error=action.error,
                retries=action.retries + 1,
            )

    def refuse(self, job: JobRecord, reason: str) -> None:
        with self.store.transaction():
            self.sender.submit_call(self.contracts.refuse_job(job.job_id, attempt=job.claimed_block or 0))
            self.store.update_job(job.job_id, ours=False, note=f"refused: {reason}")
        log.warning("job refused", reason=reason)

    def fail(self, job: JobRecord, reason: str) -> None:
        self.report(job, Report(JobStatus.FAILED, 0, reason, 0))

    # -- submission ---------------------------------------------------------------------------

    async def submit(self, job: JobRecord) -> None:
        """Admit the job, fetch its script, submit it to Slurm in its own folder; or refuse/fail it."""
        prepared = await self.prepare(job)
        if prepared is None:
            return
        early = lookup_since(job) - time.time()
        if early > 0:  # a re-claim: its Slurm job must be submitted after the bound of its look-ups
            await asyncio.sleep(early)
        self.begin([prepared])
        self.submitted([(prepared, await self.to_slurm(prepared))])

    async def submit_many(self, jobs: list[JobRecord]) -> None:
        """`submit` for fresh claims side by side: their scripts asked for together, one durable
        write for all their intents and one for all their Slurm ids (a burst's submissions share
        their fsyncs and their challenge)."""

        async def admit(job: JobRecord) -> Resources | None:
            with structlog.contextvars.bound_contextvars(job_id=job.job_id):
                try:
                    return await self.admit(job)
                except Exception as exc:  # this job waits for the work cycle; the others go on
                    log.exception("preparing the submission failed, will retry", error=describe(exc))
                    return None

        admitted = [(job, resources) for job in jobs if (resources := await admit(job)) is not None]
        if not admitted:
            return
        scripts = await self.sbatch.fetch_many(
            [
                WantedScript(
                    job.job_id, job.customer or "", str((job.definition or {}).get("batchLocationHash", ""))
                )
                for job, _ in admitted
            ]
        )

        def prepare(job: JobRecord, resources: Resources) -> PreparedSubmission | None:
            with structlog.contextvars.bound_contextvars(job_id=job.job_id):
                try:
                    fetched = self._script_or_none(job, scripts[job.job_id])
                    return None if fetched is None else self.finish(job, resources, fetched)
                except Exception as exc:  # this job waits for the work cycle; the others go on
                    log.exception("preparing the submission failed, will retry", error=describe(exc))
                    return None

        ready = [p for job, resources in admitted if (p := prepare(job, resources)) is not None]
        if not ready:
            return
        self.begin(ready)

        async def one(prepared: PreparedSubmission) -> tuple[PreparedSubmission, int | None]:
            async with self._sbatch_room:
                with structlog.contextvars.bound_contextvars(job_id=prepared.job.job_id):
                    try:
                        return prepared, await self.to_slurm(prepared)
                    except Exception as exc:  # its intent is recorded: the cycle looks it up
                        log.exception("submitting the job failed, will retry", error=describe(exc))
                        return prepared, None

        self.submitted(list(await asyncio.gather(*(one(p) for p in ready))))

    async def prepare(self, job: JobRecord) -> PreparedSubmission | None:
        """The job's admission and script, made into a Slurm submission; None when it was refused,
        failed, or must wait (the sbatch service or Slurm cannot answer now)."""
        resources = await self.admit(job)
        if resources is None:
            return None
        # The claim event carried the definition and the customer: no read of the job on chain here.
        key = str((job.definition or {}).get("batchLocationHash", ""))
        try:
            outcome: FetchedScript | ScriptError = await self.sbatch.fetch(
                job.job_id, job.customer or "", key
            )
        except ScriptError as error:
            outcome = error
        fetched = self._script_or_none(job, outcome)
        return None if fetched is None else self.finish(job, resources, fetched)

    async def admit(self, job: JobRecord) -> Resources | None:
        """What the job asks of the cluster, when this provider can run it; else None (it was
        refused or failed, or the partition cannot be described yet)."""
        definition = job.definition or {}
        if not job.max_duration_minute:
            self.fail(job, "the locked credits buy less than one minute on this provider")
            return None
        nodes = await self._nodes()
        if nodes is None:
            return None
        resources = Resources(
            ntasks=int(definition.get("ntasks", 0)),
            cpus_per_task=int(definition.get("cpusPerTask", 0)),
            mem_per_cpu_mb=int(definition.get("memPerCpu", 0)),
            gpus=int(definition.get("gpus", 0)),
        )
        reason = label_problem(definition) or refusal_reason(
            resources, job.customer or "", nodes, denied_customers=self.config.policy.denied_customers
        )
        if reason is not None:
            self.refuse(job, reason)
            return None
        return resources

    async def _nodes(self) -> list[Node] | None:
        """The partition's nodes, described once; None while Slurm cannot describe them."""
        if self.partition.hardware is None:
            try:
                await self.partition.describe()
            except SlurmError as exc:
                log.error("cannot describe the partition yet: submission waits", error=str(exc))
                return None
        return self._described_nodes()

    def _described_nodes(self) -> list[Node]:
        assert self.partition.hardware is not None
        return [Node(n.cpus, n.memory_mb, n.gpus) for n in self.partition.hardware.nodes]

    def _script_or_none(self, job: JobRecord, outcome: FetchedScript | ScriptError) -> FetchedScript | None:
        """The script fetched; else the job fails (a refusal, a script not matching its key) or waits
        (the service cannot answer now), and None."""
        if isinstance(outcome, ScriptRefused):
            self.fail(job, f"batch script unusable: {outcome}")
            return None
        if isinstance(outcome, ScriptError):
            if self.health.sbatch_ok:
                log.error("sbatch service unavailable: submission waits", error=str(outcome))
            self.health.sbatch_ok = False
            self.health.problems["sbatch"] = str(outcome)
            return None
        self.health.sbatch_ok = True
        self.health.problems.pop("sbatch", None)
        return outcome

    def finish(
        self, job: JobRecord, resources: Resources, fetched: FetchedScript
    ) -> PreparedSubmission | None:
        """The Slurm submission of an admitted job and its script; None when the script is refused."""
        customer = job.customer or ""
        policy = self.config.policy
        assert job.max_duration_minute  # as admitted
        reason = refusal_reason(
            resources,
            customer,
            self._described_nodes(),
            denied_images=policy.denied_images,
            script=fetched.script,
        )
        if reason is not None:
            self.refuse(job, reason)
            return None
        name = slurm_name(job, self.names)
        try:
            folder = job_folder(policy.jobs_root, name)
            user = self.config.slurm.users.user_for(customer)
            log_environment = job_log_environment(
                job.job_id,
                customer,
                fetched.grid_logger_url,
                self.config.logger,
                self.signer,
                self.contracts.meta_scheduler.address,
            )
            submission = JobSubmission(
                name=name,
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
            self.refuse(job, str(exc))
            return None
        return PreparedSubmission(job, submission, look_up=job.submit_intent_at is not None)

    def begin(self, prepared: list[PreparedSubmission]) -> None:
        """Commit (fsync) the submit intents before sbatch, in one transaction: an attempt without
        one never reached sbatch, so Slurm need not be asked whether it has the job; one with it (a
        crash, an sbatch that timed out) is looked up first."""
        now = time.time()
        with self.store.transaction():
            for p in prepared:
                if not p.look_up:
                    self.store.update_job(p.job.job_id, submit_intent_at=now, slurm_name=p.submission.name)

    async def to_slurm(self, prepared: PreparedSubmission) -> int | None:
        """sbatch; the Slurm id, or None when the job was refused or its submission must wait."""
        job = prepared.job
        try:
            return await self.slurm.submit(prepared.submission, since=since([job]), look_up=prepared.look_up)
        except JobAlreadySubmitted as exc:
            log.info("job already in Slurm, not submitted again", slurm_job_id=exc.slurm_job_id)
            return exc.slurm_job_id
        except SlurmUnavailable as exc:
            log.error("Slurm unavailable: submission waits", error=str(exc))
            return None
        except SlurmError as exc:
            # Only a definite refusal of this job refuses it on chain; any other failure is retried.
            if not exc.refuses_job:
                log.error("Slurm submission failed, not a refusal: submission waits", error=str(exc))
                return None
            self.refuse(job, f"Slurm refused the submission: {exc}")
            return None

    def submitted(self, results: list[tuple[PreparedSubmission, int | None]]) -> None:
        """Record the Slurm ids of the submissions that reached Slurm, in one transaction."""
        done = [(p, slurm_id) for p, slurm_id in results if slurm_id is not None]
        if not done:
            return
        crash_point("slurm_submitted")
        with self.store.transaction():
            for p, slurm_id in done:
                self.store.update_job(p.job.job_id, slurm_job_id=slurm_id)
        for p, slurm_id in done:
            log.info(
                "job submitted to Slurm",
                job_id=p.job.job_id,
                slurm_job_id=slurm_id,
                unix_user=p.submission.unix_user,
                time_limit_minutes=p.submission.time_limit_minutes,
            )

    # -- Slurm --------------------------------------------------------------------------------

    async def cancel_in_slurm(self, job: JobRecord, seen: ObservedJob | None, reason: str) -> None:
        slurm_id = seen.slurm_job_id if seen is not None else job.slurm_job_id
        if slurm_id is None:
            return
        try:
            await self.slurm.cancel(slurm_id)
        except SlurmError as exc:
            log.error("cancelling in Slurm failed, will retry", error=str(exc), slurm_job_id=slurm_id)
            return
        log.info("job cancelled in Slurm", reason=reason, slurm_job_id=slurm_id)

    async def cancel_orphans(self) -> None:
        """Cancel the Slurm jobs of earlier attempts of re-claimed jobs (harmless when they ended)."""
        for slurm_id, job_id in self.store.orphan_slurm_jobs():
            try:
                await self.slurm.cancel(slurm_id)
            except SlurmError as exc:
                log.warning("cancelling an earlier attempt's Slurm job failed", job_id=job_id, error=str(exc))
                continue
            self.store.forget_orphan(slurm_id)
            log.info("earlier attempt's Slurm job cancelled", job_id=job_id, slurm_job_id=slurm_id)

    async def follow_time_limit(self, job: JobRecord, seen: ObservedJob | None) -> None:
        """The Slurm time limit follows the minutes paid for: the claim's duration plus every top-up."""
        extra = time_limit_shortfall(job, seen)
        if seen is None or seen.time_limit_minutes is None or extra == 0:
            return
        wanted = seen.time_limit_minutes + extra
        try:
            await self.slurm.extend_time_limit(seen.slurm_job_id, extra)
        except SlurmError as exc:
            log.error("raising the time limit failed, will retry", error=str(exc))
            return
        log.info("time limit raised", extra_minutes=extra, time_limit_minutes=wanted)

    # -- delegated top-ups --------------------------------------------------------------------

    async def refresh_delegation(self, jobs: list[JobRecord], *, unread_only: bool = False) -> None:
        """Customers may grant or withdraw delegated spending at any time: re-read it now and then
        (`unread_only`: only the running jobs not read yet, as soon as they run). Nothing reads it when
        the policy makes no automatic top-ups: only those use it."""
        if not self.config.policy.auto_top_up:
            return
        if not unread_only:
            self._delegation_read.intersection_update(job.job_id for job in jobs)
        for job in jobs:
            if job.status != JobStatus.RUNNING or not job.ours:
                continue
            if unread_only and job.job_id in self._delegation_read:
                continue
            try:
                chain_job = await self.contracts.get_job(job.job_id)
            except Exception as exc:
                log.warning("reading the job failed, will retry", job_id=job.job_id, error=describe(exc))
                return
            self._delegation_read.add(job.job_id)
            if chain_job.delegate_spending_authority != job.delegate_top_up:
                self.store.update_job(job.job_id, delegate_top_up=chain_job.delegate_spending_authority)

    async def auto_top_up(self, job: JobRecord) -> None:
        """Adds a slice from the customer's allowance when a delegated job's time runs low."""
        if not job.delegate_top_up or self.store.open_actions("top_up_job_delegate", job.job_id):
            return
        chain_job: Job = await self.contracts.get_job(job.job_id)
        if not chain_job.delegate_spending_authority:
            self.store.update_job(job.job_id, delegate_top_up=False)
            return
        if chain_job.status != JobStatus.RUNNING:
            return
        if self._prices is None:
            self._prices = await self.contracts.provider_prices(self.provider)
        per_minute = credits_per_minute(chain_job.definition, self._prices)
        now = await self.contracts.latest_timestamp()
        left = remaining_minutes(
            max_cost=chain_job.max_cost, credits_per_minute=per_minute, elapsed_seconds=now - chain_job.start
        )
        slice_minutes = await self.contracts.top_up_slice_minutes()
        if not needs_delegated_top_up(remaining_minutes=left, slice_minutes=slice_minutes):
            return
        call: TxCall = self.contracts.top_up_job_delegate(job.job_id, 0)
        call = dataclasses.replace(call, dedup_key=f"topup:{job.job_id}:{chain_job.max_cost}:{now // 60}")
        self.sender.submit_call(call)
        log.info("delegated top-up requested", remaining_minutes=left, slice_minutes=slice_minutes)
