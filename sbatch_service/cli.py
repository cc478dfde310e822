"""The `grid-sbatch` command: `serve` runs both APIs, `render FILE` prints a workflow's script."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from sbatch_service.loader import load_checked
from sbatch_service.models import WorkflowError
from sbatch_service.names import SeededNames
from sbatch_service.renderer import render
from sbatch_service.settings import Settings, load_settings

EXIT_INVALID_WORKFLOW = 2
EXIT_BAD_SETTINGS = 1

app = typer.Typer(help="The sbatch service: workflows in, batch scripts out.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (environment variables override it)."),
]


def _settings(config: Path | None) -> Settings:
    """Settings, or a clear message and exit status 1 when the file or a value is wrong."""
    try:
        return load_settings(config)
    except (OSError, ValueError) as error:
        typer.echo(f"bad settings: {error}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


@app.command("render")
def render_command(
    file: Annotated[Path, typer.Argument(help="Workflow file, YAML or JSON.")],
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated names, for reproducible output.")] = 0,
) -> None:
    """Print the batch script of a workflow, or its validation errors (exit status 2); warnings go to stderr."""
    settings = _settings(config)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        typer.echo(f"cannot read {file}: {error}", err=True)
        raise typer.Exit(EXIT_INVALID_WORKFLOW) from None
    try:
        checked = load_checked(text, settings.limits, settings.module_fetcher)
    except WorkflowError as error:
        for problem in error.errors:
            typer.echo(str(problem), err=True)
        raise typer.Exit(EXIT_INVALID_WORKFLOW) from None
    except RecursionError:
        # Depth is checked before parsing; this only keeps a traceback from ever being the answer.
        typer.echo("<workflow>: nested too deeply", err=True)
        raise typer.Exit(EXIT_INVALID_WORKFLOW) from None
    for warning in checked.warnings:
        typer.echo(f"warning: {warning}", err=True)
    sys.stdout.write(render(checked.job, SeededNames(seed), settings.render_options))


@app.command("serve")
def serve_command(
    config: ConfigOption = None,
    expose_stored_scripts: Annotated[
        bool,
        typer.Option(
            "--expose-stored-scripts",
            help="Answer the GraphQL job query (debugging only: anyone who knows a job's "
            "batchLocationHash, public on chain, reads its whole script, secrets included).",
        ),
    ] = False,
) -> None:
    """Run the customer GraphQL API and the supervisor gRPC API until SIGTERM or Ctrl-C."""
    from sbatch_service.server import serve_forever

    settings = _settings(config)
    if expose_stored_scripts:
        settings = settings.model_copy(update={"expose_stored_scripts": True})
    if not settings.metascheduler_address:
        typer.echo(
            "bad settings: metascheduler_address is required (GRID_SBATCH_METASCHEDULER_ADDRESS)", err=True
        )
        raise typer.Exit(EXIT_BAD_SETTINGS)
    try:
        asyncio.run(serve_forever(settings))
    except OSError as error:
        typer.echo(f"cannot serve: {error}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
