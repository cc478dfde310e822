"""`grid-dev`: the local grid (`up`), its meta-scheduler (`oracle`) and the customer commands
(`submit`, `watch`, `cancel`, `topup`, `logs`) that work against any deployment."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from eth_account import Account

from grid_dev.chain import (
    GridError,
    Target,
    format_credits,
    job_id_bytes,
    load_key,
    parse_credits,
    resolve_target,
)
from grid_dev.customer import CustomerSession, parse_affinities, parse_labels
from grid_dev.oracle import MetaSchedulerOracle, OracleSettings
from supervisor.chain.keys import Signer
from supervisor.logs import configure_logging

app = typer.Typer(help="The local grid and the customer commands of grid-supervisor.", no_args_is_help=True)

CUSTOMER_KEY_ENV = "GRID_CUSTOMER_KEY"
ORACLE_KEY_ENV = "GRID_ORACLE_KEY"
T = TypeVar("T")

Rpc = Annotated[str, typer.Option(help="HTTP JSON-RPC endpoint of the chain.")]
DeploymentFile = Annotated[
    Path | None, typer.Option("--deployment", help="Deployment file written by `grid-contracts deploy`.")
]
MetaSchedulerAddress = Annotated[
    str | None, typer.Option("--meta-scheduler", help="MetaScheduler address (instead of --deployment).")
]
CustomerKeyFile = Annotated[
    Path | None,
    typer.Option(help=f"File with the customer's private key, mode 0600 (else ${CUSTOMER_KEY_ENV})."),
]
DEFAULT_RPC = "http://127.0.0.1:8545"


def _run(coroutine: Awaitable[T]) -> T:
    """Run a command's coroutine; a GridError becomes one line on stderr and exit status 1."""

    async def main() -> T:
        return await coroutine

    try:
        return asyncio.run(main())
    except GridError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@asynccontextmanager
async def _session(
    rpc: str,
    deployment: Path | None,
    meta_scheduler: str | None,
    key_file: Path | None,
    *,
    read_only: bool = False,
) -> AsyncIterator[CustomerSession]:
    """The customer's session, closed at the end. Reading needs no key: a throw-away one does then."""
    if read_only and key_file is None and not os.environ.get(CUSTOMER_KEY_ENV):
        signer = Signer(Account.create())
    else:
        signer = load_key(key_file, CUSTOMER_KEY_ENV, "customer")
    session = await CustomerSession.open(rpc, resolve_target(deployment, meta_scheduler), signer)
    try:
        yield session
    finally:
        await session.close()


@app.command()
def submit(
    workflow: Annotated[Path, typer.Argument(help="Workflow file (YAML or JSON, WORKFLOW.md format).")],
    credits: Annotated[str, typer.Option(help="Credits to lock in the job (decimal).")],
    sbatch_url: Annotated[
        str, typer.Option(help="The sbatch service (its base URL or /graphql endpoint).")
    ] = "http://127.0.0.1:8080",
    uses: Annotated[list[str] | None, typer.Option(help="KEY=VALUE label the provider must have.")] = None,
    affinity: Annotated[
        list[str] | None, typer.Option(help="KEY OP VALUE on a provider label, OP in == != < <= > >=.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Job name (32 bytes at most; default the file name).")
    ] = None,
    delegate_spending: Annotated[
        bool, typer.Option(help="Let the provider and the grid add credits when time runs low.")
    ] = False,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    meta_scheduler: MetaSchedulerAddress = None,
    key_file: CustomerKeyFile = None,
) -> None:
    """Store a workflow with the sbatch service, lock credits and request the job; prints its id."""

    async def go() -> None:
        amount = parse_credits(credits)
        labels = parse_labels(uses or [], "--uses")
        constraints = parse_affinities(affinity or [])
        async with _session(rpc, deployment, meta_scheduler, key_file) as session:
            result = await session.submit(
                workflow,
                amount,
                sbatch_url,
                uses=labels,
                affinity=constraints,
                job_name=name,
                delegate_spending=delegate_spending,
            )
        typer.echo(f"job {result.job_id} requested with {format_credits(result.locked)} credits")
        typer.echo(f"batch script key {result.batch_location_hash}")
        typer.echo(result.job_id)

    _run(go())


@app.command()
def watch(
    job: Annotated[str, typer.Argument(help="Job id (0x + 64 hex digits, or the job's number).")],
    poll: Annotated[float, typer.Option(help="Seconds between polls of the chain.")] = 1.0,
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    meta_scheduler: MetaSchedulerAddress = None,
    key_file: CustomerKeyFile = None,
) -> None:
    """Print each status change of a job until it ends, then its final cost and refund."""

    async def go() -> None:
        job_id = job_id_bytes(job)
        async with _session(rpc, deployment, meta_scheduler, key_file, read_only=True) as session:
            async for transition in session.transitions(job_id, poll_interval_seconds=poll):
                typer.echo(transition.describe())
            typer.echo((await session.settlement(job_id)).describe())

    _run(go())


@app.command()
def cancel(
    job: Annotated[str, typer.Argument(help="Job id (0x + 64 hex digits, or the job's number).")],
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    meta_scheduler: MetaSchedulerAddress = None,
    key_file: CustomerKeyFile = None,
) -> None:
    """Cancel a job: at once with a full refund unless it runs; a running job is stopped and billed."""

    async def go() -> None:
        job_id = job_id_bytes(job)
        async with _session(rpc, deployment, meta_scheduler, key_file) as session:
            after = await session.cancel(job_id)
        if after.status.is_cold:
            refund = after.max_cost - after.final_cost
            typer.echo(f"job {after.job_id} {after.status.name}; {format_credits(refund)} credits refunded")
        else:
            typer.echo(
                f"job {after.job_id} is {after.status.name}: cancellation requested; its provider stops it "
                "and bills the time used"
            )

    _run(go())


@app.command()
def topup(
    job: Annotated[str, typer.Argument(help="Job id (0x + 64 hex digits, or the job's number).")],
    credits: Annotated[str, typer.Option(help="Credits to add (decimal).")],
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    meta_scheduler: MetaSchedulerAddress = None,
    key_file: CustomerKeyFile = None,
) -> None:
    """Add credits to a scheduled or running job; its provider extends the time limit."""

    async def go() -> None:
        amount = parse_credits(credits)
        job_id = job_id_bytes(job)
        async with _session(rpc, deployment, meta_scheduler, key_file) as session:
            after = await session.top_up(job_id, amount)
        typer.echo(
            f"job {after.job_id} topped up by {format_credits(amount)}: "
            f"{format_credits(after.max_cost)} credits locked in all"
        )

    _run(go())


@app.command()
def logs(
    job: Annotated[str, typer.Argument(help="Job id (0x + 64 hex digits, or the job's number).")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stay until the job ends, printing new lines.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="Only lines from then: 30s, 10m, 2h, 1d ago, Unix seconds or ISO 8601.")
    ] = None,
    logger_url: Annotated[str, typer.Option(help="The log service, host:port.")] = "127.0.0.1:50052",
    tls: Annotated[
        bool | None,
        typer.Option("--tls/--no-tls", help="TLS to the log service (default: on, except on loopback)."),
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate (PEM) of the log service.")] = None,
    server_name: Annotated[
        str | None, typer.Option(help="Name to check in the service's certificate.")
    ] = None,
    key_file: CustomerKeyFile = None,
) -> None:
    """Print a job's output lines with their timestamps (the customer's signature opens them)."""
    from grid_dev.logs import client_tls, parse_since, print_logs

    async def go() -> None:
        job_id = "0x" + job_id_bytes(job).hex()
        since_ns = parse_since(since) if since else 0
        signer = load_key(key_file, CUSTOMER_KEY_ENV, "customer")
        await print_logs(
            logger_url,
            client_tls(logger_url, tls, ca_file, server_name),
            signer,
            job_id,
            follow=follow,
            since_ns=since_ns,
            echo=typer.echo,
        )

    _run(go())


@app.command()
def oracle(
    rpc: Rpc = DEFAULT_RPC,
    deployment: DeploymentFile = None,
    meta_scheduler: MetaSchedulerAddress = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help=f"File with the oracle's private key, mode 0600 (else ${ORACLE_KEY_ENV})."),
    ] = None,
    from_block: Annotated[
        int | None, typer.Option(help="First block to read events from (default: the deployment block).")
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between passes.")] = 2.0,
    approve_providers: Annotated[bool, typer.Option(help="Approve providers waiting for approval.")] = False,
) -> None:
    """Run the meta-scheduler: place pending jobs on fitting providers, time out unclaimed ones."""

    configure_logging("info", "auto", sys.stdout)

    async def go() -> None:
        signer = load_key(key_file, ORACLE_KEY_ENV, "oracle")
        target = resolve_target(deployment, meta_scheduler)
        if from_block is not None:
            target = Target(target.meta_scheduler, from_block)
        settings = OracleSettings(poll_interval_seconds=poll, approve_providers=approve_providers)
        scheduler = await MetaSchedulerOracle.connect(rpc, target, signer, settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, scheduler.stop)
        try:
            await scheduler.run()
        finally:
            await scheduler.close()

    _run(go())


@app.command()
def up(
    keep_running: Annotated[
        bool, typer.Option(help="Stay up after the example job, print the endpoints, stop on Ctrl-C.")
    ] = False,
    run_dir: Annotated[
        Path | None, typer.Option(help="Folder for logs, keys, configuration and state (default: a new one).")
    ] = None,
    credits: Annotated[str, typer.Option(help="Credits the example job locks.")] = "200",
    bootstrap: Annotated[bool, typer.Option(help="Run scripts/bootstrap.sh first.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds the example job may take to settle.")] = 600.0,
    start_cluster: Annotated[
        bool, typer.Option(help="Start the Slurm cluster when it is not up (else require it to be up).")
    ] = True,
    chains: Annotated[
        int,
        typer.Option(
            min=1,
            max=4,
            help="Chains (anvils with chain ids 31337, 31338, ...), each with its deployment and "
            "services, all served by one supervisor; the example runs on each.",
        ),
    ] = 1,
) -> None:
    """Start a whole grid on this machine, run the first example workflow to settlement, then stop."""
    from grid_dev.local_grid import LocalGrid, LocalGridError, UpOptions

    amount = parse_credits_or_exit(credits)
    try:
        options = UpOptions(
            keep_running=keep_running,
            run_dir=run_dir,
            credits=amount,
            bootstrap=bootstrap,
            job_timeout_seconds=timeout,
            start_cluster=start_cluster,
            chains=chains,
        )
        LocalGrid(options, echo=typer.echo).up()
    except LocalGridError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def parse_credits_or_exit(text: str) -> int:
    try:
        return parse_credits(text)
    except GridError as exc:
        raise typer.BadParameter(str(exc), param_hint="--credits") from None
