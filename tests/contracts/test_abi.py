"""The compiled ABIs keep every signature of the reference ABIs, and abi/ is up to date with contracts/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils import event_abi_to_log_topic, function_abi_to_4byte_selector

from grid_contracts.artifacts import CONTRACT_NAMES, REPO_ROOT
from grid_contracts.compile import compile_contracts, render_artifact
from grid_protocol.abi import ABI_DIR, load_abi

REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference-abi"
COMPILED_FOR_REFERENCE = {
    "Constants": "Constants",
    "Credit": "Credit",
    "IJobRepository": "JobRepository",
    "IProviderJobQueues": "ProviderJobQueues",
    "IProviderManager": "ProviderManager",
    "MetaScheduler": "MetaScheduler",
}

pytestmark = pytest.mark.skipif(
    not REFERENCE_DIR.is_dir(), reason=f"reference ABIs not found at {REFERENCE_DIR}"
)


def _reference(name: str) -> list[dict[str, Any]]:
    data = json.loads((REFERENCE_DIR / f"{name}.json").read_text())
    entries: list[dict[str, Any]] = data["abi"] if isinstance(data, dict) else data
    return entries


def _shape(param: dict[str, Any]) -> Any:
    """A parameter's type with its struct field names, recursively (names are part of struct layout)."""
    if param["type"].startswith("tuple"):
        return (param["type"], tuple((c["name"], _shape(c)) for c in param["components"]))
    return param["type"]


def _key(entry: dict[str, Any]) -> tuple[str, bytes]:
    if entry["type"] == "event":
        return ("event", event_abi_to_log_topic(entry))  # type: ignore[arg-type]
    return (entry["type"], function_abi_to_4byte_selector(entry))  # type: ignore[arg-type]


def _index(entries: list[dict[str, Any]]) -> dict[tuple[str, bytes], dict[str, Any]]:
    return {_key(e): e for e in entries if e["type"] in ("function", "event", "error")}


@pytest.mark.parametrize("reference", sorted(COMPILED_FOR_REFERENCE))
def test_every_reference_entry_exists_with_the_same_signature(reference: str) -> None:
    compiled = _index(load_abi(COMPILED_FOR_REFERENCE[reference]))
    all_errors = {k for name in CONTRACT_NAMES for k in _index(load_abi(name)) if k[0] == "error"}
    checked = 0
    for key, entry in _index(_reference(reference)).items():
        if key[0] == "error":
            assert key in all_errors, f"error {entry['name']} of {reference} is in no compiled ABI"
            continue
        assert key in compiled, f"{entry['type']} {entry['name']} of {reference} missing or changed"
        mine = compiled[key]
        assert [_shape(p) for p in mine["inputs"]] == [_shape(p) for p in entry["inputs"]], entry["name"]
        if entry["type"] == "function":
            assert [_shape(p) for p in mine["outputs"]] == [_shape(p) for p in entry["outputs"]], entry[
                "name"
            ]
        if entry["type"] == "event":
            assert [p["indexed"] for p in mine["inputs"]] == [p["indexed"] for p in entry["inputs"]], entry[
                "name"
            ]
        checked += 1
    assert checked > 0


def test_every_protocol_error_is_declared_with_its_arguments() -> None:
    compiled = {k: e for name in CONTRACT_NAMES for k, e in _index(load_abi(name)).items() if k[0] == "error"}
    reference = _index(_reference("Errors"))
    assert len(reference) == 27
    for key, entry in reference.items():
        assert key in compiled, f"error {entry['name']} missing"
        assert [p["name"] for p in compiled[key]["inputs"]] == [p["name"] for p in entry["inputs"]]


def test_abi_directory_is_up_to_date_with_the_sources() -> None:
    """Fails when contracts/ changed without `grid-contracts compile` (or the compiler settings changed)."""
    for name, artifact in compile_contracts().items():
        path: Path = ABI_DIR / f"{name}.json"
        assert path.is_file(), f"{path} missing"
        assert path.read_text() == render_artifact(artifact), f"{path} is stale: run `grid-contracts compile`"


SDK_DIR = REFERENCE_DIR / "sdk"


def _abi_type(param: dict[str, Any]) -> Any:
    """A parameter's ABI encoding with struct field names; an enum encodes as uint8 (libraries name it)."""
    if param["type"].startswith("tuple"):
        return (param["type"], tuple((c["name"], _abi_type(c)) for c in param["components"]))
    if param.get("internalType", "").startswith("enum "):
        return "uint8"
    return param["type"]


def _signature(entry: dict[str, Any]) -> tuple[str, str, tuple[Any, ...]]:
    return (entry["type"], entry["name"], tuple(_abi_type(p) for p in entry["inputs"]))


@pytest.mark.skipif(not SDK_DIR.is_dir(), reason=f"the SDK's ABIs not found at {SDK_DIR}")
@pytest.mark.parametrize("name", sorted(p.stem for p in SDK_DIR.glob("*.json")))
def test_every_entry_of_the_sdk_abis_exists_with_the_same_signature(name: str) -> None:
    """DeepSquare's SDK ships these ABIs: every function, event and error must be in the same contract."""
    compiled = {_signature(e): e for e in load_abi(name) if e["type"] in ("function", "event", "error")}
    missing: list[str] = []
    for entry in json.loads((SDK_DIR / f"{name}.json").read_text()):
        if entry["type"] not in ("function", "event", "error"):
            continue
        mine = compiled.get(_signature(entry))
        if mine is None:
            missing.append(f"{entry['type']} {entry['name']}")
            continue
        if entry["type"] == "function":
            assert [_abi_type(p) for p in mine["outputs"]] == [_abi_type(p) for p in entry["outputs"]], (
                f"outputs of {name}.{entry['name']}"
            )
            assert mine["stateMutability"] == entry["stateMutability"], (
                f"mutability of {name}.{entry['name']}"
            )
        if entry["type"] == "event":
            assert [p["indexed"] for p in mine["inputs"]] == [p["indexed"] for p in entry["inputs"]], (
                f"indexed flags of {name}.{entry['name']}"
            )
    assert missing == [], f"{name}: missing or changed: {', '.join(missing)}"
