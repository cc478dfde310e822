"""Deploy the seven protocol contracts to any JSON-RPC endpoint and wire their roles.

Order and wiring follow PROTOCOL.md section 1. The result is a deployment file (chain id, addresses,
deploy block) from which every other component finds the contracts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from grid_protocol.abi import load_artifact

RECEIPT_TIMEOUT_S = 120
METASCHEDULER_ROLE = Web3.keccak(text="METASCHEDULER_ROLE")
METASCHEDULER_CONTRACT_ROLE = Web3.keccak(text="METASCHEDULER_CONTRACT_ROLE")


class DeployError(RuntimeError):
    """The deployment could not be made; the message says what to fix."""


@dataclass(frozen=True)
class Deployment:
    """Where the protocol lives on one chain."""

    chain_id: int
    deploy_block: int
    deployer: str
    credit: str
    constants: str
    tools: str
    job_repository: str
    provider_manager: str
    provider_job_queues: str
    meta_scheduler: str
    oracle: str | None = None
    auto_approve: bool = False
    minted: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())

    @classmethod
    def read(cls, path: Path) -> Deployment:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as exc:
            raise DeployError(f"deployment file {path} does not exist") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise DeployError(f"deployment file {path} is not a deployment: {exc}") from exc


def load_account(private_key: str) -> LocalAccount:
    """The deployer's account; the error never repeats the key."""
    try:
        account: LocalAccount = Account.from_key(private_key.strip())
    except (ValueError, TypeError) as exc:
        raise DeployError("the deployer key is not a valid secp256k1 private key (64 hex digits)") from exc
    return account


def connect(rpc_url: str) -> Web3:
    """A Web3 on the endpoint, checked to answer; refuses clearly when nothing is there."""
    if rpc_url.startswith(("ws://", "wss://")):
        raise DeployError(f"deploy needs an HTTP JSON-RPC endpoint, not {rpc_url}")
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        w3.eth.chain_id  # noqa: B018
    except (OSError, Web3Exception, ValueError) as exc:
        raise DeployError(f"no JSON-RPC endpoint answers at {rpc_url}: {exc}") from exc
    return w3


def link_bytecode(artifact: dict[str, Any], libraries: Mapping[str, str]) -> str:
    """The creation bytecode with each library placeholder replaced by its address."""
    code: str = artifact["bytecode"][2:]
    for unit_libraries in artifact["linkReferences"].values():
        for library, places in unit_libraries.items():
            if library not in libraries:
                raise DeployError(f"{artifact['contractName']} needs library {library}, not deployed yet")
            address = libraries[library].lower().removeprefix("0x")
            for place in places:
                start = place["start"] * 2
                code = code[:start] + address + code[start + place["length"] * 2 :]
    if "__$" in code:
        raise DeployError(f"{artifact['contractName']} still has unlinked libraries")
    return "0x" + code


class _Deployer:
    """Sends the deployer's transactions one after the other, each checked for success."""

    def __init__(self, w3: Web3, account: LocalAccount) -> None:
        self.w3 = w3
        self.account = account
        self.nonce = int(w3.eth.get_transaction_count(account.address, "pending"))

    def _send(self, tx: dict[str, Any], what: str) -> Any:
        tx = {**tx, "from": self.account.address, "nonce": self.nonce, "chainId": self.w3.eth.chain_id}
        try:
            tx.setdefault("gas", int(self.w3.eth.estimate_gas(tx) * 1.2))  # type: ignore[arg-type]
        except ContractLogicError as exc:
            raise DeployError(f"{what} would revert: {exc}") from exc
        if "maxFeePerGas" not in tx and "gasPrice" not in tx:
            tx["gasPrice"] = self.w3.eth.gas_price
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
        except TimeExhausted as exc:
            raise DeployError(f"{what}: no receipt within {RECEIPT_TIMEOUT_S} s") from exc
        except (Web3Exception, ValueError) as exc:
            raise DeployError(f"{what} was refused by the node: {exc}") from exc
        self.nonce += 1
        if receipt["status"] != 1:
            raise DeployError(f"{what} reverted (transaction {tx_hash.hex()})")
        return receipt

    def deploy(self, name: str, *args: Any, libraries: Mapping[str, str] | None = None) -> Contract:
        artifact = load_artifact(name)
        bytecode = link_bytecode(artifact, libraries or {})
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=bytecode)
        tx = factory.constructor(*args).build_transaction({"from": self.account.address, "nonce": self.nonce})
        receipt = self._send({k: v for k, v in tx.items() if k not in ("from", "nonce")}, f"deploying {name}")
        deployed: Contract = self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])
        return deployed

    def call(self, function: Any, what: str) -> Any:
        tx = function.build_transaction({"from": self.account.address, "nonce": self.nonce})
        return self._send({k: v for k, v in tx.items() if k not in ("from", "nonce")}, what)


def _address(value: str, what: str) -> str:
    if not is_address(value):
        raise DeployError(f"{what} {value!r} is not an address")
    return to_checksum_address(value)


def deploy(
    rpc_url: str,
    private_key: str,
    *,
    oracle: str | None = None,
    mint: dict[str, int] | None = None,
    initial_supply_wei: int = 0,
    auto_approve: bool = False,
    expected_chain_id: int | None = None,
) -> Deployment:
    """Deploy, wire, optionally grant the oracle role, switch on auto-approval and mint credits."""
    account = load_account(private_key)
    oracle = _address(oracle, "oracle") if oracle else None
    mint = {_address(addr, "mint recipient"): int(amount) for addr, amount in (mint or {}).items()}
    w3 = connect(rpc_url)
    chain_id = w3.eth.chain_id
    if expected_chain_id is not None and chain_id != expected_chain_id:
        raise DeployError(f"the endpoint is chain {chain_id}, expected chain {expected_chain_id}")
    if w3.eth.get_balance(account.address) == 0:
        raise DeployError(f"the deployer {account.address} has no native balance on chain {chain_id} for gas")

    d = _Deployer(w3, account)
    start_block = w3.eth.block_number
    credit = d.deploy("Credit", initial_supply_wei)
    constants = d.deploy("Constants")
    tools = d.deploy("Tools")
    libraries = {"Tools": tools.address}
    jobs = d.deploy("JobRepository", libraries=libraries)
    providers = d.deploy("ProviderManager", libraries=libraries)
    queues = d.deploy("ProviderJobQueues", jobs.address)
    scheduler = d.deploy(
        "MetaScheduler",
        credit.address,
        constants.address,
        providers.address,
        queues.address,
        jobs.address,
        libraries=libraries,
    )
    d.call(jobs.functions.grantRole(METASCHEDULER_ROLE, scheduler.address), "granting JobRepository's role")
    d.call(
        providers.functions.grantRole(METASCHEDULER_CONTRACT_ROLE, scheduler.address),
        "granting ProviderManager's contract role",
    )
    d.call(
        queues.functions.transferOwnership(scheduler.address), "handing ProviderJobQueues to MetaScheduler"
    )
    if oracle:
        d.call(scheduler.functions.grantRole(METASCHEDULER_ROLE, oracle), "granting the oracle role")
        d.call(
            providers.functions.grantRole(METASCHEDULER_ROLE, oracle), "letting the oracle approve providers"
        )
    if auto_approve:
        d.call(providers.functions.setAutoApprove(True), "switching on automatic approval")
    for recipient, amount in mint.items():
        d.call(credit.functions.mint(recipient, amount), f"minting credits to {recipient}")

    return Deployment(
        chain_id=chain_id,
        deploy_block=start_block + 1,
        deployer=account.address,
        credit=credit.address,
        constants=constants.address,
        tools=tools.address,
        job_repository=jobs.address,
        provider_manager=providers.address,
        provider_job_queues=queues.address,
        meta_scheduler=scheduler.address,
        oracle=oracle,
        auto_approve=auto_approve,
        minted=mint,
    )
