"""Named crash points: a test makes the daemon kill itself at one exact place, to prove recovery.

With `GRID_SUPERVISOR_CRASH_AT=<point>` in its environment, the daemon logs `crash point reached`
with the point's name when it gets there and sends itself SIGKILL: no cleanup runs, as in a power
cut. Without the variable a point costs one lookup. The points mark the windows where a crash is
most likely to lose or double a job:

- `claim_recorded`: the claim is mined and its ClaimJobEvent read, but not yet recorded;
- `slurm_submitted`: sbatch returned the Slurm job id, which is not yet saved;
- `end_decided`: Slurm's job ended and its end status is decided, but not yet queued for the chain.
"""

from __future__ import annotations

import os
import signal
import sys

import structlog

CRASH_ENV = "GRID_SUPERVISOR_CRASH_AT"
POINTS = frozenset({"claim_recorded", "slurm_submitted", "end_decided"})

log = structlog.get_logger("supervisor.faults")


def crash_point(name: str) -> None:
    """Kill the process here when the environment names this point."""
    if os.environ.get(CRASH_ENV) != name:
        return
    log.critical("crash point reached", point=name)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
