"""Decoding logs into events: pure functions over the event ABIs.

Event arguments are given as plain JSON values (ints, strings, bools, lists, dicts): bytes become
0x-hex strings, addresses checksummed strings, structs dicts by field name. A handler sees the same
shape whether the event was just read from the chain or replayed from the store to be undone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from grid_protocol.abi import ABIEntry
from supervisor.chain.abi import LENIENT_CODEC, canonical_type, plain_value, signature_of


@dataclass(frozen=True)
class ChainEvent:
    """One decoded log, located by block and (tx hash, log index)."""

    name: str
    args: Mapping[str, Any]
    address: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash, self.log_index)


class LogDecodeError(ValueError):
    """A log that matches none of the known events, or whose data does not fit the event's ABI."""


def _hex(value: Any) -> str:
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


def topic_of(event: ABIEntry) -> str:
    return "0x" + keccak(text=signature_of(event)).hex()


class EventDecoder:
    """Decodes logs of a set of events (non-anonymous), recognised by their first topic."""

    def __init__(self, events: Iterable[ABIEntry]) -> None:
        self._by_topic: dict[str, ABIEntry] = {}
        for event in events:
            if event.get("type") != "event" or event.get("anonymous"):
                raise ValueError(f"not a named, non-anonymous event ABI: {event.get('name')}")
            self._by_topic[topic_of(event)] = event

    @property
    def topics(self) -> list[str]:
        return sorted(self._by_topic)

    def decode(self, log: Mapping[str, Any]) -> ChainEvent:
        """Decode one log as returned by eth_getLogs; raises LogDecodeError with the reason."""
        topics = [_hex(t) for t in log.get("topics", [])]
        where = f"log {log.get('logIndex')} of tx {_hex(log.get('transactionHash', b''))}"
        if not topics:
            raise LogDecodeError(f"{where} has no topic")
        event = self._by_topic.get(topics[0])
        if event is None:
            raise LogDecodeError(f"{where} has topic {topics[0]}, which is none of the followed events")
        inputs: Sequence[Mapping[str, Any]] = event.get("inputs", [])
        indexed = [i for i in inputs if i.get("indexed")]
        plain = [i for i in inputs if not i.get("indexed")]
        if len(topics) - 1 != len(indexed):
            raise LogDecodeError(
                f"{where}: {event['name']} has {len(indexed)} indexed arguments, "
                f"the log has {len(topics) - 1}"
            )
        data = log.get("data", b"")
        raw = bytes.fromhex(data[2:]) if isinstance(data, str) else bytes(data)
        try:
            values = LENIENT_CODEC.decode([canonical_type(dict(i)) for i in plain], raw)
            plain_values = dict(zip((str(i["name"]) for i in plain), values, strict=True))
            args: dict[str, Any] = {}
            topic_iter = iter(topics[1:])
            for param in inputs:
                name = str(param["name"])
                if param.get("indexed"):
                    topic = bytes.fromhex(next(topic_iter)[2:])
                    kind = canonical_type(dict(param))
                    if kind in ("string", "bytes") or kind.endswith("]") or kind.startswith("("):
                        args[name] = "0x" + topic.hex()  # only the hash of a dynamic value is logged
                    else:
                        (decoded,) = LENIENT_CODEC.decode([kind], topic)
                        args[name] = plain_value(decoded, param)
                else:
                    args[name] = plain_value(plain_values[name], param)
        except (DecodingError, ValueError, OverflowError, TypeError) as exc:
            raise LogDecodeError(f"{where}: data does not decode as {signature_of(event)}: {exc}") from None
        return ChainEvent(
            name=str(event["name"]),
            args=args,
            address=to_checksum_address(log["address"]),
            block_number=int(log["blockNumber"]),
            block_hash=_hex(log["blockHash"]),
            tx_hash=_hex(log["transactionHash"]),
            log_index=int(log["logIndex"]),
        )
