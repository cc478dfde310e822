"""What the local grid's tools share to talk to a deployment: keys, the deployment, one-at-a-time
transactions with decoded reverts, and reading logs in bounded ranges.

The oracle and the customer commands send few transactions, one after the other, and wait for each
receipt; they need none of the supervisor's outbox machinery, only clear errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import AsyncWeb3, Web3
from web3.contract import AsyncContract
from web3.exceptions import TimeExhausted, Web3Exception

from grid_contracts.deploy import DeployError, Deployment
from grid_protocol.abi import ABIEntry, load_abi
from supervisor.chain.contracts import DeploymentError, ProtocolContracts
from supervisor.chain.errors import ErrorDecoder, revert_data_of
from supervisor.chain.events import ChainEvent, EventDecoder, LogDecodeError
from supervisor.chain.keys import KeyFileError, Signer, load_signer
from supervisor.chain.rpc import connect_http, describe, read

CREDIT = 10**18
RECEIPT_TIMEOUT_S = 60.0
LOG_RANGE_BLOCKS = 5_000


class GridError(RuntimeError):
    """A failure to report to the user in one line (never with a key in it)."""


def load_key(key_file: Path | None, env_var: str, who: str) -> Signer:
    """The signing key from a file (raw hex or keystore, mode 0600) or else an environment variable."""
    if key_file is not None:
        try:
            return load_signer(key_file)
        except KeyFileError as exc:
            raise GridError(str(exc)) from None
    text = os.environ.get(env_var, "").strip()
    if not text:
        raise GridError(f"no {who} key: pass --key-file or set {env_var}")
    try:
        return Signer(Account.from_key(text))
    except (ValueError, TypeError):
        raise GridError(f"{env_var} does not hold a valid private key (64 hex digits)") from None


@dataclass(frozen=True)
class Target:
    """Where the protocol is: the MetaScheduler address and the block to read events from."""

    meta_scheduler: str
    from_block: int


def resolve_target(deployment_file: Path | None, meta_scheduler: str | None) -> Target:
    """From `--deployment FILE` (address and deploy block) or `--meta-scheduler ADDRESS` (block 0)."""
    if meta_scheduler is not None:
        if not Web3.is_address(meta_scheduler):
            raise GridError(f"--meta-scheduler {meta_scheduler!r} is not an address")
        return Target(Web3.to_checksum_address(meta_scheduler), 0)
    if deployment_file is None:
        raise GridError("say where the protocol is: --deployment deployment.json or --meta-scheduler ADDRESS")
    try:
        deployment = Deployment.read(deployment_file)
    except DeployError as exc:
        raise GridError(str(exc)) from None
    return Target(Web3.to_checksum_address(deployment.meta_scheduler), deployment.deploy_block)


async def connect(rpc_url: str, target: Target) -> tuple[AsyncWeb3[Any], ProtocolContracts]:
    """An AsyncWeb3 on the endpoint and the protocol found from its MetaScheduler address."""
    if not rpc_url.startswith(("http://", "https://")):
        raise GridError(f"--rpc needs an HTTP JSON-RPC endpoint, not {rpc_url!r}")
    w3 = connect_http(rpc_url)
    try:
        await read(lambda: w3.eth.chain_id, attempts=2)
    except Exception as exc:
        raise GridError(f"no JSON-RPC endpoint answers at {rpc_url} ({describe(exc)})") from None
    try:
        contracts = await ProtocolContracts.discover(w3, target.meta_scheduler)
    except DeploymentError as exc:
        raise GridError(f"no protocol deployment at {target.meta_scheduler}: {exc}") from None
    return w3, contracts


async def disconnect(w3: AsyncWeb3[Any]) -> None:
    """Close the HTTP sessions of an AsyncWeb3 (else aiohttp complains at exit)."""
    provider: Any = w3.provider
    if hasattr(provider, "disconnect"):
        await provider.disconnect()


def contract(w3: AsyncWeb3[Any], name: str, address: str) -> AsyncContract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi(name))


def parse_credits(text: str | int | Decimal) -> int:
    """Credits (decimal, 18 digits at most after the point) as credit-wei."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise GridError(f"{text!r} is not a number of credits") from None
    wei = value * CREDIT
    if not value.is_finite() or value < 0 or wei != wei.to_integral_value():
        raise GridError(f"{text!r} is not a usable number of credits (>= 0, at most 18 decimals)")
    return int(wei)


def format_credits(wei: int) -> str:
    """Credit-wei as credits, without trailing zeros (`105.6384`)."""
    sign = "-" if wei < 0 else ""
    whole, fraction = divmod(abs(wei), CREDIT)
    digits = f"{fraction:018d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


class Transactor:
    """Sends one signer's transactions one after the other; a revert becomes a GridError naming the
    decoded custom error (`InsufficientFunds(available=..., required=...)`)."""

    def __init__(self, w3: AsyncWeb3[Any], signer: Signer) -> None:
        self.w3 = w3
        self.signer = signer
        self.decoder = ErrorDecoder.for_protocol()

    def decode_failure(self, exc: BaseException) -> str:
        data = revert_data_of(exc)
        if data is not None:
            return str(self.decoder.decode(data))
        return describe(exc)

    async def send(self, call: Any, what: str) -> Any:
        """Send `call` (a contract function call with its arguments); returns the receipt."""
        sender = self.signer.address
        try:
            tx: dict[str, Any] = dict(await call.build_transaction({"from": sender}))
        except Web3Exception as exc:
            raise GridError(f"{what} would revert: {self.decode_failure(exc)}") from None
        except (OSError, ValueError) as exc:
            raise GridError(f"{what} could not be prepared: {describe(exc)}") from None
        tx["nonce"] = await self.w3.eth.get_transaction_count(sender, "pending")
        tx["gas"] = int(tx["gas"] * 1.25)
        signed = self.signer.sign_transaction(tx)
        try:
            tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
        except TimeExhausted:
            raise GridError(f"{what}: no receipt within {RECEIPT_TIMEOUT_S:.0f} s") from None
        except (Web3Exception, OSError, ValueError) as exc:
            raise GridError(f"{what} was refused by the node: {self.decode_failure(exc)}") from None
        if receipt["status"] != 1:
            raise GridError(f"{what} reverted in transaction {tx_hash.hex()}")
        return receipt


def events_of(abi: Sequence[ABIEntry], names: Iterable[str]) -> list[ABIEntry]:
    wanted = set(names)
    return [e for e in abi if e.get("type") == "event" and e.get("name") in wanted]


class LogReader:
    """Reads the logs of some events of one contract from a block on, in bounded ranges, and
    remembers where it stopped so each call returns only what is new."""

    def __init__(self, w3: AsyncWeb3[Any], address: str, events: Sequence[ABIEntry], from_block: int) -> None:
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.decoder = EventDecoder(events)
        self.next_block = from_block

    async def new_events(self) -> list[ChainEvent]:
        head = int(await read(lambda: self.w3.eth.block_number))
        found: list[ChainEvent] = []
        while self.next_block <= head:
            last = min(head, self.next_block + LOG_RANGE_BLOCKS - 1)
            params: dict[str, Any] = {
                "address": self.address,
                "fromBlock": self.next_block,
                "toBlock": last,
                "topics": [self.decoder.topics],
            }
            logs = await read(lambda p=params: self.w3.eth.get_logs(p))  # type: ignore[misc]
            for log in logs:
                try:
                    found.append(self.decoder.decode(log))
                except LogDecodeError:
                    continue
            self.next_block = last + 1
        found.sort(key=lambda e: (e.block_number, e.log_index))
        return found


def job_id_bytes(job_id: str) -> bytes:
    """A job id given by a user (0x + 64 hex digits, or a decimal job number) as its 32 bytes."""
    text = job_id.strip()
    try:
        if text.lower().startswith("0x"):
            raw = bytes.fromhex(text[2:])
            if len(raw) == 32:
                return raw
        elif text.isdigit():
            return int(text).to_bytes(32, "big")
    except (ValueError, OverflowError):
        pass
    raise GridError(f"{job_id!r} is not a job id (0x followed by 64 hex digits, or the job's number)")
