"""Compile the Solidity sources of contracts/ into abi/<Name>.json with py-solc-x.

All sources, OpenZeppelin's included, go into one standard-JSON call as inline content, so the input is
self-contained and the output depends only on the sources and the settings below.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import solcx
import solcx.wrapper

from grid_contracts.artifacts import CONTRACT_NAMES, CONTRACTS_DIR, REPO_ROOT
from grid_protocol.abi import ABI_DIR

SOLC_VERSION = "0.8.26"
NODE_MODULES = REPO_ROOT / ".tools" / "npm" / "node_modules"
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {
        "*": {
            "*": [
                "abi",
                "evm.bytecode.object",
                "evm.bytecode.linkReferences",
                "evm.deployedBytecode.object",
                "evm.deployedBytecode.linkReferences",
                "evm.methodIdentifiers",
            ]
        }
    },
}
_IMPORT = re.compile(r'^\s*import\s+(?:[^"\']*\s+from\s+)?["\']([^"\']+)["\']\s*;', re.MULTILINE)


class CompileError(RuntimeError):
    """The sources could not be compiled."""


def solc_binary() -> Path:
    """The solc shim installed by scripts/bootstrap.sh (solcjs behind a native solc's interface)."""
    bundled = REPO_ROOT / ".tools" / "bin" / "solc"
    if bundled.is_file():
        return bundled
    found = shutil.which("solc")
    if found is None:
        raise CompileError("solc not found: run scripts/bootstrap.sh")
    return Path(found)


def _resolve(import_path: str, importer: str) -> str:
    """Source unit name of an import, relative imports resolved against the importing unit."""
    if import_path.startswith("."):
        parts = importer.split("/")[:-1]
        for part in import_path.split("/"):
            if part == "..":
                parts.pop()
            elif part != ".":
                parts.append(part)
        return "/".join(parts)
    return import_path


def _read_unit(unit: str) -> str:
    local = CONTRACTS_DIR / unit
    if local.is_file():
        return local.read_text()
    library = NODE_MODULES / unit
    if library.is_file():
        return library.read_text()
    raise CompileError(f"cannot find source {unit!r} (contracts/ or .tools/npm/node_modules)")


def collect_sources() -> dict[str, dict[str, str]]:
    """Every source unit reachable from contracts/*.sol, as standard-JSON `sources`."""
    pending = sorted(p.name for p in CONTRACTS_DIR.glob("*.sol"))
    sources: dict[str, dict[str, str]] = {}
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        content = _read_unit(unit)
        sources[unit] = {"content": content}
        pending.extend(_resolve(found, unit) for found in _IMPORT.findall(content))
    return dict(sorted(sources.items()))


def compile_contracts() -> dict[str, dict[str, Any]]:
    """Compile everything in one call and return the artifact of each protocol contract."""
    solc = solc_binary()
    version = solcx.wrapper.get_solc_version(solc, with_commit_hash=True)
    if version.base_version != SOLC_VERSION:
        raise CompileError(f"solc {version} found, {SOLC_VERSION} required: run scripts/bootstrap.sh")
    standard_input = {"language": "Solidity", "sources": collect_sources(), "settings": SETTINGS}
    try:
        output = solcx.compile_standard(standard_input, solc_binary=solc)
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc

    compiled: dict[str, dict[str, Any]] = {}
    for unit, contracts in output["contracts"].items():
        for name, data in contracts.items():
            if name not in CONTRACT_NAMES or not unit.endswith(f"{name}.sol"):
                continue
            compiled[name] = {
                "contractName": name,
                "sourceName": f"contracts/{unit}",
                "abi": data["abi"],
                "bytecode": "0x" + data["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                "linkReferences": data["evm"]["bytecode"]["linkReferences"],
                "deployedLinkReferences": data["evm"]["deployedBytecode"]["linkReferences"],
                "methodIdentifiers": data["evm"]["methodIdentifiers"],
                "compiler": {"version": str(version), "settings": SETTINGS},
            }
    missing = set(CONTRACT_NAMES) - compiled.keys()
    if missing:
        raise CompileError(f"contracts missing from the output: {sorted(missing)}")
    return compiled


def render_artifact(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def write_artifacts(abi_dir: Path = ABI_DIR) -> list[Path]:
    """Compile and write abi/<Name>.json for each contract; returns the paths written."""
    abi_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in compile_contracts().items():
        path = abi_dir / f"{name}.json"
        path.write_text(render_artifact(artifact))
        written.append(path)
    return sorted(written)
