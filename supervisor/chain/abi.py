"""How the supervisor decodes what the chain returns: lenient strings, plain JSON values, signatures,
and the protocol's custom errors.

The contracts' ABIs come from the one loader, `grid_protocol.abi`. The package keeps its own copy of
the protocol's custom errors (`data/Errors.json`) so error decoding works even where the artifacts
are not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi.codec import ABICodec
from eth_abi.decoding import StringDecoder
from eth_abi.encoding import TextStringEncoder
from eth_abi.grammar import BasicType
from eth_abi.registry import ABIRegistry, BaseEquals
from eth_utils.address import to_checksum_address
from web3._utils.abi import build_strict_registry

from grid_protocol.abi import ABI_DIR, ABIEntry, ArtifactError, load_abi

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


class _ReplacingStringDecoder(StringDecoder):
    """Decodes `string` values with U+FFFD for bytes that are not UTF-8."""

    def __init__(self) -> None:
        super().__init__(handle_string_errors="replace")  # type: ignore[no-untyped-call]

    @classmethod
    def from_type_str(cls, abi_type: BasicType, registry: ABIRegistry) -> _ReplacingStringDecoder:
        return cls()


def _lenient_registry() -> ABIRegistry:
    registry: ABIRegistry = build_strict_registry()
    registry.unregister("string")
    registry.register(
        BaseEquals("string"),  # type: ignore[no-untyped-call]
        TextStringEncoder,
        _ReplacingStringDecoder,
        label="string",
    )
    return registry


#: web3's strict codec, except that strings decode leniently: a job's labels, names and errors are
#: bytes its customer chose, and one byte that is not UTF-8 must not make the whole job unreadable.
LENIENT_CODEC = ABICodec(_lenient_registry())


@cache
def protocol_errors(abi_dir: Path = ABI_DIR) -> tuple[ABIEntry, ...]:
    """Every custom error the protocol can revert with, deduplicated by signature.

    The packaged Errors.json is the baseline; errors declared by the compiled contracts in `abi_dir`
    are added, so an extension's new errors decode too.
    """
    found: dict[str, ABIEntry] = {}
    sources = [(PACKAGE_DATA, "Errors")]
    if abi_dir.is_dir():
        sources.extend((abi_dir, path.stem) for path in sorted(abi_dir.glob("*.json")))
    for folder, name in sources:
        try:
            entries = load_abi(name, folder)
        except (ArtifactError, OSError):
            continue
        for entry in entries:
            if entry.get("type") == "error":
                signature = f"{entry['name']}({','.join(canonical_type(i) for i in entry.get('inputs', []))})"
                found.setdefault(signature, entry)
    return tuple(found.values())


def canonical_type(param: dict[str, Any]) -> str:
    """The ABI type string of a parameter, with tuples expanded (as used in selectors)."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param.get("components", []))
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def signature_of(entry: ABIEntry) -> str:
    return f"{entry['name']}({','.join(canonical_type(i) for i in entry.get('inputs', []))})"


def plain_value(value: Any, param: Mapping[str, Any]) -> Any:
    """An ABI-decoded value as plain JSON, structs as dicts by field name."""
    kind = str(param["type"])
    if kind.endswith("]"):
        inner = dict(param, type=kind[: kind.rindex("[")])
        return [plain_value(v, inner) for v in value]
    if kind == "tuple":
        components = param.get("components", [])
        return {str(c["name"]): plain_value(v, c) for v, c in zip(value, components, strict=True)}
    if kind == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value
