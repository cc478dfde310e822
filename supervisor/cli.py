"""`grid-supervisor`: run the daemon, and look at what it holds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Generic, TypeVar

import typer

from supervisor.config import ConfigError, Deployment, SupervisorConfig, load_config
from supervisor.logs import LEVELS, configure_logging
from supervisor.redaction import redact_text
from supervisor.store import Store, StoreError

T = TypeVar("T")

app = typer.Typer(help="The provider-side supervisor of the grid.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (GRID_SUPERVISOR_* variables override it)."),
]


def _config(path: Path | None) -> SupervisorConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from exc


@dataclass(frozen=True)
class _Read(Generic[T]):
    """What one deployment's state file held, or why it could not be read."""

    deployment: Deployment
    found: T | None
    problem: str | None = None


def _read_stores(config: SupervisorConfig, read: Callable[[Store], T]) -> list[_Read[T]]:
    """`read` applied to each deployment's state file in turn; a missing or unreadable file is
    reported with the others rather than ending the command."""
    results: list[_Read[T]] = []
    for deployment in config.deployments:
        path = deployment.store_path
        if not path.exists():
            results.append(
                _Read(deployment, None, f"no state file at {path}: the supervisor has not run yet")
            )
            continue
        try:
            store = Store.open(path)
        except StoreError as exc:
            results.append(_Read(deployment, None, str(exc)))
            continue
        try:
            results.append(_Read(deployment, read(store)))
        finally:
            store.close()
    return results


def _summary(store: Store) -> dict[str, object]:
    cursor = store.get_cursor("main")
    jobs = store.list_jobs()
    by_status: dict[str, int] = {}
    for job in jobs:
        if not job.closed:
            by_status[job.status.name] = by_status.get(job.status.name, 0) + 1
    oldest = store.oldest_open_action_age(time.time())
    return {
        "chain_id": store.get_meta("chain_id"),
        "cursor_block": None if cursor is None else cursor.block_number,
        "outbox_depth": store.outbox_depth(),
        "oldest_outbox_item_seconds": None if oldest is None else round(oldest, 1),
        "open_jobs": by_status,
        "closed_jobs": sum(1 for job in jobs if job.closed),
    }


LogLevelOption = Annotated[
    str | None,
    typer.Option("--log-level", help="debug, info, warning or error (overrides log.level)."),
]


@app.command()
def run(config: ConfigOption = None, log_level: LogLevelOption = None) -> None:
    """Run every deployment's lanes until SIGTERM (then drain the outboxes and exit; Slurm jobs keep running).

    Under systemd (Type=notify) it reports READY once every deployment caught up with its chain,
    feeds the watchdog while every work loop that has begun keeps cycling and says STOPPING when it
    drains.
    """
    from supervisor.daemon import DaemonListener, LaneCrashed  # heavy imports: only for `run`
    from supervisor.ops.metrics import MetricsListener, OpsServer, OpsState
    from supervisor.ops.notify import SystemdNotifier
    from supervisor.service import Service
    from supervisor.slurm.runner import wait_for_children_in_the_loop

    settings = _config(config)
    level = log_level or settings.log.level
    if level not in LEVELS:
        typer.echo(f"--log-level: {level!r} is not one of {', '.join(LEVELS)}", err=True)
        raise typer.Exit(2)
    configure_logging(level, settings.log.format)
    names = [deployment.name for deployment in settings.deployments]
    listeners: list[DaemonListener] = [SystemdNotifier(deployments=names)]
    server: OpsServer | None = None
    if settings.metrics.enabled:
        state = OpsState(settings.metrics, deployments=names)
        server = OpsServer(state)
        try:
            server.start()
        except OSError as exc:
            typer.echo(f"supervisor cannot start: {redact_text(str(exc))}", err=True)
            raise typer.Exit(1) from exc
        listeners.append(MetricsListener(state))
    wait_for_children_in_the_loop()
    try:
        asyncio.run(Service(settings, listeners=listeners).run())
    except LaneCrashed as exc:
        typer.echo(f"supervisor stopped: {redact_text(str(exc))}", err=True)
        raise typer.Exit(1) from exc
    except (StoreError, ValueError, OSError) as exc:
        typer.echo(f"supervisor cannot start: {redact_text(str(exc))}", err=True)
        raise typer.Exit(1) from exc
    finally:
        if server is not None:
            server.stop()


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check the configuration, each deployment's chain, registration, wallet, sbatch service and state
    file, and Slurm.

    Prints OK, WARN or FAIL per check with what to do; exit status 1 when any check fails.
    """
    from supervisor.ops.doctor import exit_status, render, run_doctor

    configure_logging("error", "auto")  # the checks speak for themselves; retries stay quiet
    checks = run_doctor(config)
    typer.echo(render(checks))
    raise typer.Exit(exit_status(checks))


@app.command("build-libslurm")
def build_libslurm(
    into: Annotated[
        Path | None,
        typer.Option("--into", help="Directory for the module (default: this Python's site-packages)."),
    ] = None,
    include_dir: Annotated[
        Path | None, typer.Option(help="Where slurm/slurm.h is (default: /usr/include).")
    ] = None,
    library_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where libslurmfull.so is (default: Debian's /usr/lib/x86_64-linux-gnu/slurm-wlm)."
        ),
    ] = None,
) -> None:
    """Compile the binding to libslurm's submission call against this login node's Slurm headers.

    With it the local backend submits jobs without an sbatch process each (`slurm.submitter`). Run it
    again after upgrading Slurm: the daemon refuses a binding built for another libslurm.
    """
    from supervisor.slurm.libslurm_build import DEFAULT_INCLUDE_DIR, DEFAULT_LIBRARY_DIR, build

    try:
        built = build(
            into,
            include_dir=include_dir or DEFAULT_INCLUDE_DIR,
            library_dir=library_dir or DEFAULT_LIBRARY_DIR,
        )
    except Exception as exc:  # the compiler's and the linker's errors come in several types
        typer.echo(f"cannot build the libslurm binding: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"built {built.path} (libslurm API {built.api_version:#x})")


@app.command()
def status(config: ConfigOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Each deployment's view from its store: chain cursor, outbox, jobs by status.

    Every deployment's summary starts with `chain` (its name: `main` for a `[chain]` file) and
    `state_file`; a state file that is missing or unreadable gives `error` instead of the figures.
    With --json: one deployment prints its summary as one object; several print an object keyed by
    chain name, each value the same summary. Exit status 1 when any state file could not be read.
    """
    settings = _config(config)
    summaries: dict[str, dict[str, object]] = {}
    for read in _read_stores(settings, _summary):
        head: dict[str, object] = {
            "chain": read.deployment.name,
            "state_file": str(read.deployment.store_path),
        }
        body = read.found if read.found is not None else {"error": read.problem}
        summaries[read.deployment.name] = {**head, **body}
    failed = any("error" in summary for summary in summaries.values())
    if as_json:
        shown: object = next(iter(summaries.values())) if len(summaries) == 1 else summaries
        typer.echo(json.dumps(shown, indent=2))
    else:
        blocks = [
            "\n".join(f"{key:28s} {value}" for key, value in summary.items())
            for summary in summaries.values()
        ]
        typer.echo("\n\n".join(blocks))
    if failed:
        raise typer.Exit(1)


@app.command()
def jobs(
    config: ConfigOption = None,
    include_closed: Annotated[bool, typer.Option("--all", help="Include closed jobs.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every job the daemon tracks on each deployment, with its chain (the deployment's name), chain
    status, Slurm id and last report.

    A state file that is missing or unreadable is named on stderr, the other deployments' jobs are
    still listed, and the exit status is 1.
    """
    settings = _config(config)
    rows: list[dict[str, object]] = []
    reads = _read_stores(settings, lambda store: _job_rows(store, include_closed=include_closed))
    for read in reads:
        if read.found is None:
            typer.echo(f"{read.deployment.name}: {read.problem}", err=True)
        else:
            rows.extend({"chain": read.deployment.name, **row} for row in read.found)
    failed = any(read.found is None for read in reads)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif not rows:
        typer.echo("no jobs")
    else:
        for row in rows:
            typer.echo(
                f"{row['chain']}  {row['job_id']}  {row['chain_status']:<15} slurm={row['slurm_job_id'] or '-':<8} "
                f"reported={row['reported'] or '-':<15} {'closed' if row['closed'] else ''} {row['note'] or ''}".rstrip()
            )
    if failed:
        raise typer.Exit(1)


def _job_rows(store: Store, *, include_closed: bool) -> list[dict[str, object]]:
    return [
        {
            "job_id": job.job_id,
            "chain_status": job.status.name,
            "slurm_job_id": job.slurm_job_id,
            "reported": None if job.last_reported_status is None else job.last_reported_status.name,
            "ours": job.ours,
            "cancel_requested": job.cancel_requested,
            "extra_minutes": job.extra_minutes,
            "closed": job.closed,
            "note": job.note,
        }
        for job in store.list_jobs()
        if include_closed or not job.closed
    ]


if __name__ == "__main__":
    app()
