"""What a log may be called and who may own it: the reference takes both as paths unchecked.

A log is named after its job (`0x` + 64 hex digits) and owned by the job's customer (`0x` + 40 hex
digits); both are kept lowercase on disk, so no name can leave its folder or alias another.
"""

from __future__ import annotations

import re

LOG_NAME = re.compile(r"^0x[0-9a-fA-F]{64}$")
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
#: Writer ids in the `grid-log-writer` metadata: 16 hex digits (8 random bytes).
WRITER_ID = re.compile(r"^[0-9a-f]{16}$")


class BadName(ValueError):
    """A log name or an address that is not of the expected form."""


def log_name(value: str) -> str:
    """The job id, lowercase; BadName for anything else."""
    if not LOG_NAME.fullmatch(value):
        raise BadName(f"log name {value[:80]!r} is not a job id (0x followed by 64 hex digits)")
    return value.lower()


def address(value: str) -> str:
    """The address, lowercase; BadName for anything else."""
    if not ADDRESS.fullmatch(value):
        raise BadName(f"address {value[:80]!r} is not 0x followed by 40 hex digits")
    return value.lower()
