"""The one loader of the contracts' compiled artifacts (ABI, bytecode), for every party of the grid.

The artifacts live in `grid_contracts/abi/` (package data, so an installed wheel has them; the
repository's `abi/` is a link to that folder, the one place `grid-contracts compile` writes).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

#: Where the compiled artifacts are: next to this package, in grid_contracts (installed together).
ABI_DIR = Path(__file__).resolve().parent.parent / "grid_contracts" / "abi"

#: One entry of an ABI (a function, an event, an error...), as JSON.
ABIEntry = dict[str, Any]


class ArtifactError(RuntimeError):
    """An artifact is missing or unreadable: the message says which and what to run."""


@cache
def load_artifact(name: str, abi_dir: Path = ABI_DIR) -> dict[str, Any]:
    """The artifact of one contract (abi, bytecode, link references, compiler settings).

    A file holding a bare ABI list (as other tools write them) is read as an artifact with only its abi.
    """
    path = abi_dir / f"{name}.json"
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"no artifact {path}: run `grid-contracts compile`") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"artifact {path} is not valid JSON: {exc}") from exc
    if isinstance(document, list):
        document = {"abi": document}
    if not isinstance(document, dict) or not isinstance(document.get("abi"), list):
        raise ArtifactError(f"{path} holds neither an ABI list nor an artifact with an 'abi' list")
    return document


def load_abi(name: str, abi_dir: Path = ABI_DIR) -> list[ABIEntry]:
    """The ABI of one contract: a fresh list (web3 may keep it), of the cached entries."""
    return [entry for entry in load_artifact(name, abi_dir)["abi"] if isinstance(entry, dict)]
