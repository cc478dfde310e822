"""Decoding reverts into the protocol's custom errors, with their arguments.

Pure functions over revert data (the bytes a failed call returns) plus a helper that digs that data
out of web3.py's exceptions. "Already done" errors (the status is already the one asked for, or the
job is already cold) mean the action's goal holds: callers count them as delivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak

from grid_protocol.abi import ABI_DIR, ABIEntry
from supervisor.chain.abi import (
    canonical_type,
    plain_value,
    protocol_errors,
    signature_of,
)

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)

# Reverts that mean "what you asked for is already the case".
ALREADY_DONE_ERRORS = frozenset({"SameStatusError", "JobHotStatusOnly", "AlreadyDone"})


@dataclass(frozen=True)
class DecodedRevert:
    """A revert reason: a custom error with named arguments, Error(string), Panic(code) or unknown data."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    selector: str = ""
    raw: str = ""

    @property
    def already_done(self) -> bool:
        return self.name in ALREADY_DONE_ERRORS

    @property
    def known(self) -> bool:
        return self.name not in {"UnknownRevert", "EmptyRevert"}

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={_show(v)}" for k, v in self.args.items())
        return f"{self.name}({inner})"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


class ErrorDecoder:
    """Maps 4-byte selectors to the protocol's custom errors."""

    def __init__(self, errors: Iterable[ABIEntry]) -> None:
        self._by_selector: dict[bytes, ABIEntry] = {}
        for entry in errors:
            self._by_selector[keccak(text=signature_of(entry))[:4]] = entry

    @classmethod
    def for_protocol(cls, abi_dir: Path = ABI_DIR) -> ErrorDecoder:
        return cls(protocol_errors(abi_dir))

    @property
    def names(self) -> set[str]:
        return {str(e["name"]) for e in self._by_selector.values()}

    def decode(self, data: bytes | str | None) -> DecodedRevert:
        """Decode revert data; never raises (unknown or malformed data is reported as such)."""
        raw = _to_bytes(data)
        raw_hex = "0x" + raw.hex()
        if not raw:
            return DecodedRevert("EmptyRevert", raw=raw_hex)
        selector, body = raw[:4], raw[4:]
        try:
            if selector == ERROR_STRING_SELECTOR:
                (message,) = abi_decode(["string"], body)
                return DecodedRevert("Error", {"message": message}, selector.hex(), raw_hex)
            if selector == PANIC_SELECTOR:
                (code,) = abi_decode(["uint256"], body)
                return DecodedRevert("Panic", {"code": code}, selector.hex(), raw_hex)
            entry = self._by_selector.get(selector)
            if entry is None:
                return DecodedRevert(
                    "UnknownRevert", {"selector": "0x" + selector.hex()}, selector.hex(), raw_hex
                )
            inputs = entry.get("inputs", [])
            values = abi_decode([canonical_type(i) for i in inputs], body)
            args = {
                str(param.get("name") or f"arg{n}"): plain_value(value, param)
                for n, (param, value) in enumerate(zip(inputs, values, strict=True))
            }
            return DecodedRevert(str(entry["name"]), args, selector.hex(), raw_hex)
        except (DecodingError, ValueError, OverflowError):
            return DecodedRevert(
                "UnknownRevert", {"selector": "0x" + selector.hex()}, selector.hex(), raw_hex
            )


def _to_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    text = data.strip()
    if text.startswith(("0x", "0X")):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def revert_data_of(exc: BaseException) -> str | None:
    """The revert data carried by a web3.py exception (custom error, logic error, RPC error)."""
    data = getattr(exc, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return data
    if isinstance(data, bytes):
        return "0x" + data.hex()
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict):
            inner = error.get("data")
            if isinstance(inner, str) and inner.startswith("0x"):
                return inner
            if isinstance(inner, dict) and isinstance(inner.get("data"), str):
                return str(inner["data"])
    return None
