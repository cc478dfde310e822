"""`grid-logger`: the log service (`serve`), the job-side writer (`write`) and the master key (`keygen`)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The grid's job logs: the service, the job-side writer.", no_args_is_help=True)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(help="TOML settings file (each setting may be overridden by GRID_LOGGER_<NAME>)."),
    ] = None,
) -> None:
    """Run the log service until SIGTERM."""
    if importlib.util.find_spec("cryptography") is None:
        typer.echo(
            "grid-logger serve: this installation lacks the 'logger' extra of grid-supervisor "
            "(missing: cryptography).\nInstall it with: pip install 'grid-supervisor[logger]'",
            err=True,
        )
        raise typer.Exit(1)
    from pydantic import ValidationError

    from grid_logger.server import serve_forever
    from grid_logger.settings import load_settings
    from grid_logger.store import MasterKeyError
    from supervisor.logs import configure_logging

    configure_logging("info", "auto", sys.stdout)
    try:
        settings = load_settings(config)
        asyncio.run(serve_forever(settings))
    except (ValidationError, ValueError, FileNotFoundError, MasterKeyError, OSError) as error:
        typer.echo(f"grid-logger serve: {error}", err=True)
        raise typer.Exit(2) from None


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="File to create (mode 0600); never overwritten.")],
) -> None:
    """Create a master key file."""
    from grid_logger.store import create_master_key

    try:
        create_master_key(path)
    except FileExistsError:
        typer.echo(f"grid-logger keygen: {path} exists: refusing to replace a master key", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"master key written to {path} (mode 0600)")


@app.command(context_settings={"allow_extra_args": False})
def write(
    pipe: Annotated[
        Path | None, typer.Option(help="FIFO to create and read (else $GRID_LOGGER_PIPE).")
    ] = None,
    watch_pid: Annotated[
        int | None, typer.Option(help="Drain and stop when this process (the job's shell) is gone.")
    ] = None,
) -> None:
    """Stream the lines written into a FIFO to the log service (settings from GRID_LOGGER_*)."""
    from grid_logger.writer import ConfigError, WriterSettings, run_writer

    try:
        settings = WriterSettings.from_env(pipe=pipe, watch_pid=watch_pid)
    except ConfigError as error:
        typer.echo(f"grid-logger write: {error}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_writer(settings))


def main() -> None:
    app()
