"""Console scripts whose dependencies are an extra of the package.

A login node installs the daemon alone (`pip install grid-supervisor`): `grid-sbatch`, `grid-dev`
and `grid-contracts` are there too, but without their extra they say which one to install instead
of ending in an ImportError traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

#: The modules each extra brings, as imported.
EXTRA_MODULES = {
    "sbatch": ("graphql", "starlette", "uvicorn", "yaml", "cachetools"),
    "contracts": ("solcx",),
}


def missing_extras(extras: tuple[str, ...]) -> dict[str, list[str]]:
    """{extra: its modules that cannot be imported here}, for the extras not fully installed."""
    missing: dict[str, list[str]] = {}
    for extra in extras:
        absent = [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]
        if absent:
            missing[extra] = absent
    return missing


def _launch(command: str, target: str, extras: tuple[str, ...]) -> None:
    missing = missing_extras(extras)
    if missing:
        wanted = ",".join(missing)
        modules = ", ".join(name for names in missing.values() for name in names)
        sys.stderr.write(
            f"{command}: this installation lacks the '{wanted}' extra of grid-supervisor "
            f"(missing: {modules}).\n"
            f"Install it with: pip install 'grid-supervisor[{wanted}]'\n"
        )
        raise SystemExit(1)
    module_name, _, attribute = target.partition(":")
    getattr(importlib.import_module(module_name), attribute)()


def grid_sbatch() -> None:
    _launch("grid-sbatch", "sbatch_service.cli:app", ("sbatch",))


def grid_dev() -> None:
    _launch("grid-dev", "grid_dev.cli:app", ("sbatch",))


def grid_contracts() -> None:
    _launch("grid-contracts", "grid_contracts.cli:app", ("contracts",))
