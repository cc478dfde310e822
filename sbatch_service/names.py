"""Sources of the names a rendered script needs (image files, container name prefixes).

Production uses random names; tests inject a seeded source so the rendering is reproducible.
"""

from __future__ import annotations

import random
import secrets
from typing import Protocol


class NameSource(Protocol):
    def next_name(self, prefix: str) -> str:
        """A fresh name starting with prefix, made of [a-z0-9-] only."""
        ...


class RandomNames:
    """Names with 12 random hex digits."""

    def next_name(self, prefix: str) -> str:
        return f"{prefix}-{secrets.token_hex(6)}"


class SeededNames:
    """Reproducible names for tests and for `grid-sbatch render`."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)

    def next_name(self, prefix: str) -> str:
        return f"{prefix}-{self._random.getrandbits(48):012x}"
