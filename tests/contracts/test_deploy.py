"""The deploy command against real endpoints: wiring, options, the deployment file, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from web3 import Web3

from grid_contracts.deploy import DeployError, Deployment, deploy
from grid_dev.anvil import Anvil, free_port
from grid_protocol.abi import load_abi
from tests.fixtures.contracts import CREDIT, anvil_account

ROLE = Web3.keccak(text="METASCHEDULER_ROLE")
CONTRACT_ROLE = Web3.keccak(text="METASCHEDULER_CONTRACT_ROLE")


def contract(w3: Web3, name: str, address: str):  # type: ignore[no-untyped-def]
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi(name))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "grid_contracts", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_cli_deploys_wires_and_writes_the_deployment_file(anvil: Anvil, tmp_path: Path) -> None:
    admin, oracle, customer = anvil_account(0), anvil_account(1), anvil_account(5)
    key_file = tmp_path / "key"
    key_file.write_text(admin.key.hex() + "\n")
    out = tmp_path / "deployment.json"
    result = run_cli(
        "deploy",
        "--rpc",
        anvil.http_url,
        "--key-file",
        str(key_file),
        "--oracle",
        oracle.address,
        "--mint",
        f"{customer.address}=2500",
        "--testnet-auto-approve",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert admin.key.hex() not in result.stdout + result.stderr
    deployment = Deployment.read(out)
    assert deployment.chain_id == 31337
    assert json.loads(out.read_text())["meta_scheduler"] == deployment.meta_scheduler

    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    scheduler = contract(w3, "MetaScheduler", deployment.meta_scheduler)
    assert scheduler.functions.jobs().call() == deployment.job_repository
    assert scheduler.functions.hasRole(ROLE, oracle.address).call() is True
    jobs = contract(w3, "JobRepository", deployment.job_repository)
    assert jobs.functions.hasRole(ROLE, deployment.meta_scheduler).call() is True
    providers = contract(w3, "ProviderManager", deployment.provider_manager)
    assert providers.functions.hasRole(CONTRACT_ROLE, deployment.meta_scheduler).call() is True
    assert providers.functions.hasRole(ROLE, oracle.address).call() is True
    assert providers.functions.autoApprove().call() is True
    queues = contract(w3, "ProviderJobQueues", deployment.provider_job_queues)
    assert queues.functions.owner().call() == deployment.meta_scheduler
    credit = contract(w3, "Credit", deployment.credit)
    assert credit.functions.balanceOf(customer.address).call() == 2500 * CREDIT
    # The deploy block is the one that created the first contract: logs are complete from there on.
    assert (
        w3.eth.get_code(
            Web3.to_checksum_address(deployment.credit), block_identifier=deployment.deploy_block - 1
        )
        == b""
    )
    assert (
        w3.eth.get_code(Web3.to_checksum_address(deployment.credit), block_identifier=deployment.deploy_block)
        != b""
    )


def test_auto_approve_is_off_by_default(anvil: Anvil) -> None:
    deployment = deploy(anvil.http_url, anvil_account(0).key.hex())
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    providers = contract(w3, "ProviderManager", deployment.provider_manager)
    assert providers.functions.autoApprove().call() is False
    assert deployment.oracle is None


def test_refuses_an_endpoint_where_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DeployError, match=f"no JSON-RPC endpoint answers at {url}"):
        deploy(url, anvil_account(0).key.hex())


def test_refuses_a_malformed_key_without_repeating_it(anvil: Anvil) -> None:
    secret = "0x" + "zz" * 32
    with pytest.raises(DeployError) as raised:
        deploy(anvil.http_url, secret)
    assert "not a valid secp256k1 private key" in str(raised.value)
    assert secret not in str(raised.value)


def test_refuses_a_key_without_gas(anvil: Anvil) -> None:
    with pytest.raises(DeployError, match="has no native balance"):
        deploy(anvil.http_url, "0x" + "11" * 32)


def test_refuses_the_wrong_chain(anvil: Anvil) -> None:
    with pytest.raises(DeployError, match="is chain 31337, expected chain 1"):
        deploy(anvil.http_url, anvil_account(0).key.hex(), expected_chain_id=1)


def test_refuses_a_bad_oracle_address(anvil: Anvil) -> None:
    with pytest.raises(DeployError, match="oracle '0x1234' is not an address"):
        deploy(anvil.http_url, anvil_account(0).key.hex(), oracle="0x1234")


def test_cli_explains_a_missing_key_and_a_bad_endpoint(tmp_path: Path) -> None:
    result = run_cli("deploy", "--rpc", "http://127.0.0.1:1", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "no deployer key: pass --key-file or set GRID_DEPLOYER_KEY" in result.stderr
    key_file = tmp_path / "key"
    key_file.write_text(anvil_account(0).key.hex())
    result = run_cli("deploy", "--rpc", f"http://127.0.0.1:{free_port()}", "--key-file", str(key_file))
    assert result.returncode == 1
    assert "deployment failed: no JSON-RPC endpoint answers" in result.stderr


def test_compile_check_reports_up_to_date() -> None:
    result = run_cli("compile", "--check")
    assert result.returncode == 0, result.stderr
    assert "abi/ matches contracts/" in result.stdout
