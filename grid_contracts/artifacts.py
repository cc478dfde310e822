"""The compiled contracts: where they are and how to read them.

The artifacts live in the package (`grid_contracts/abi/`, shipped as package data), so an installed
wheel has them; the repository's `abi/` is a link to that folder, the one place they are written.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = REPO_ROOT / "contracts"
ABI_DIR = Path(__file__).resolve().parent / "abi"

#: The protocol's contracts in deployment order (PROTOCOL.md section 1).
CONTRACT_NAMES = (
    "Credit",
    "Constants",
    "Tools",
    "JobRepository",
    "ProviderManager",
    "ProviderJobQueues",
    "MetaScheduler",
)


class ArtifactError(RuntimeError):
    """An artifact is missing or unreadable."""


@cache
def load_artifact(name: str, abi_dir: Path = ABI_DIR) -> dict[str, Any]:
    """The artifact of one contract: abi, bytecode, link references, compiler version and settings."""
    path = abi_dir / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"no artifact {path}: run `grid-contracts compile`") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"artifact {path} is not valid JSON: {exc}") from exc
    return artifact


def load_abi(name: str) -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = load_artifact(name)["abi"]
    return abi
