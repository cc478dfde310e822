"""`grid-contracts`: compile the protocol's Solidity sources and deploy them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from grid_contracts.compile import CompileError, compile_contracts, render_artifact, write_artifacts
from grid_contracts.deploy import DeployError, deploy
from grid_protocol.abi import ABI_DIR

app = typer.Typer(help="Compile and deploy the grid's contracts.", no_args_is_help=True)

KEY_ENV = "GRID_DEPLOYER_KEY"


@app.command("compile")
def compile_command(
    check: Annotated[bool, typer.Option(help="Only report whether abi/ matches contracts/.")] = False,
) -> None:
    """Compile contracts/ into abi/<Name>.json (one py-solc-x standard-JSON call)."""
    try:
        if check:
            stale = [
                name
                for name, artifact in compile_contracts().items()
                if not (ABI_DIR / f"{name}.json").is_file()
                or (ABI_DIR / f"{name}.json").read_text() != render_artifact(artifact)
            ]
            if stale:
                typer.echo(
                    f"abi/ is stale for: {', '.join(sorted(stale))}; run `grid-contracts compile`", err=True
                )
                raise typer.Exit(1)
            typer.echo("abi/ matches contracts/")
            return
        for path in write_artifacts():
            typer.echo(f"wrote {path}")
    except CompileError as exc:
        typer.echo(f"compilation failed: {exc}", err=True)
        raise typer.Exit(2) from exc


def _parse_mint(values: list[str]) -> dict[str, int]:
    mint: dict[str, int] = {}
    for value in values:
        address, sep, amount = value.partition("=")
        if not sep:
            raise typer.BadParameter(f"{value!r}: expected ADDRESS=CREDITS", param_hint="--mint")
        try:
            mint[address] = int(float(amount) * 10**18) if "." in amount else int(amount) * 10**18
        except ValueError as exc:
            raise typer.BadParameter(f"{value!r}: {amount!r} is not a number", param_hint="--mint") from exc
    return mint


@app.command("deploy")
def deploy_command(
    rpc: Annotated[str, typer.Option(help="HTTP JSON-RPC endpoint.")] = "http://127.0.0.1:8545",
    key_file: Annotated[
        Path | None, typer.Option(help=f"File holding the deployer's private key (else ${KEY_ENV}).")
    ] = None,
    oracle: Annotated[str | None, typer.Option(help="Grant the meta-scheduler role to this address.")] = None,
    mint: Annotated[list[str] | None, typer.Option(help="ADDRESS=CREDITS to mint (repeatable).")] = None,
    auto_approve: Annotated[
        bool, typer.Option("--testnet-auto-approve", help="Approve provider registrations automatically.")
    ] = False,
    chain_id: Annotated[
        int | None, typer.Option(help="Refuse to deploy unless the endpoint is this chain.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the deployment file.")] = Path("deployment.json"),
) -> None:
    """Deploy the seven contracts, wire their roles and write the deployment file."""
    if key_file is not None:
        try:
            key = key_file.read_text()
        except OSError as exc:
            typer.echo(f"cannot read the key file {key_file}: {exc.strerror}", err=True)
            raise typer.Exit(2) from exc
    elif KEY_ENV in os.environ:
        key = os.environ[KEY_ENV]
    else:
        typer.echo(f"no deployer key: pass --key-file or set {KEY_ENV}", err=True)
        raise typer.Exit(2)
    try:
        deployment = deploy(
            rpc,
            key,
            oracle=oracle,
            mint=_parse_mint(mint or []),
            auto_approve=auto_approve,
            expected_chain_id=chain_id,
        )
    except DeployError as exc:
        typer.echo(f"deployment failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    deployment.write(out)
    typer.echo(f"MetaScheduler at {deployment.meta_scheduler} on chain {deployment.chain_id}; wrote {out}")
