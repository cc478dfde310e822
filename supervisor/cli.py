"""`grid-supervisor`: run the daemon, and look at what it holds."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from supervisor.config import ConfigError, SupervisorConfig, load_config
from supervisor.logs import LEVELS, configure_logging
from supervisor.redaction import redact_text
from supervisor.store import Store, StoreError

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


def _open_store(config: SupervisorConfig) -> Store:
    if not config.store.path.exists():
        typer.echo(f"no state file at {config.store.path}: the supervisor has not run yet", err=True)
        raise typer.Exit(1)
    try:
        return Store.open(config.store.path)
    except StoreError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


LogLevelOption = Annotated[
    str | None,
    typer.Option("--log-level", help="debug, info, warning or error (overrides log.level)."),
]


@app.command()
def run(config: ConfigOption = None, log_level: LogLevelOption = None) -> None:
    """Run the daemon until SIGTERM (then drain the outbox and exit; Slurm jobs keep running).

    Under systemd (Type=notify) it reports READY once caught up with the chain, feeds the watchdog
    from every live work cycle and says STOPPING when it drains.
    """
    from supervisor.daemon import DaemonListener, LaneCrashed  # heavy imports: only for `run`
    from supervisor.ops.metrics import MetricsListener, OpsServer, OpsState
    from supervisor.ops.notify import SystemdNotifier
    from supervisor.service import Service

    settings = _config(config)
    level = log_level or settings.log.level
    if level not in LEVELS:
        typer.echo(f"--log-level: {level!r} is not one of {', '.join(LEVELS)}", err=True)
        raise typer.Exit(2)
    configure_logging(level, settings.log.format)
    listeners: list[DaemonListener] = [SystemdNotifier()]
    server: OpsServer | None = None
    if settings.metrics.enabled:
        state = OpsState(settings.metrics)
        server = OpsServer(state)
        try:
            server.start()
        except OSError as exc:
            typer.echo(f"supervisor cannot start: {redact_text(str(exc))}", err=True)
            raise typer.Exit(1) from exc
        listeners.append(MetricsListener(state, settings.deployments[0].sbatch))
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
    """Check the configuration, the chain, the registration, the wallet, Slurm and the sbatch service.

    Prints OK, WARN or FAIL per check with what to do; exit status 1 when any check fails.
    """
    from supervisor.ops.doctor import exit_status, render, run_doctor

    configure_logging("error", "auto")  # the checks speak for themselves; retries stay quiet
    checks = run_doctor(config)
    typer.echo(render(checks))
    raise typer.Exit(exit_status(checks))


@app.command()
def status(config: ConfigOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The daemon's view from its store: chain cursor, outbox, jobs by status."""
    settings = _config(config)
    store = _open_store(settings)
    try:
        cursor = store.get_cursor("main")
        jobs = store.list_jobs()
        by_status: dict[str, int] = {}
        for job in jobs:
            if not job.closed:
                by_status[job.status.name] = by_status.get(job.status.name, 0) + 1
        oldest = store.oldest_open_action_age(time.time())
        summary = {
            "chain_id": store.get_meta("chain_id"),
            "cursor_block": None if cursor is None else cursor.block_number,
            "outbox_depth": store.outbox_depth(),
            "oldest_outbox_item_seconds": None if oldest is None else round(oldest, 1),
            "open_jobs": by_status,
            "closed_jobs": sum(1 for job in jobs if job.closed),
        }
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        typer.echo(f"{key:28s} {value}")


@app.command()
def jobs(
    config: ConfigOption = None,
    include_closed: Annotated[bool, typer.Option("--all", help="Include closed jobs.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every job the daemon tracks, with its chain status, Slurm id and last report."""
    settings = _config(config)
    store = _open_store(settings)
    try:
        rows = [
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
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no jobs")
        return
    for row in rows:
        typer.echo(
            f"{row['job_id']}  {row['chain_status']:<15} slurm={row['slurm_job_id'] or '-':<8} "
            f"reported={row['reported'] or '-':<15} {'closed' if row['closed'] else ''} {row['note'] or ''}".rstrip()
        )


if __name__ == "__main__":
    app()
