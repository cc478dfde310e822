"""The protocol's contracts: their sources and their names in deployment order.

The compiled artifacts are read through the one loader, `grid_protocol.abi` (which also says where
they live, `grid_contracts/abi/`).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = REPO_ROOT / "contracts"

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
