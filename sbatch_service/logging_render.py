"""The job side of `enableLogging`: bash that copies the job's output to the grid logger.

Contract with the renderer (`renderer.py` calls these for `enableLogging: true`):

- `logging_prologue()` goes near the top of the script, after `set -euo pipefail` and before any
  step or background process starts (the reference puts it right after the resource exports). It
  defines `grid_log_stop` and, when the supervisor passed `GRID_LOGGER_URL` and `GRID_LOGGER_TOKEN`
  (`supervisor.job_logging`), starts `$GRID_LOGGER_WRITER write` on a FIFO, then sends the
  script's stdout and stderr through `tee` into both the job's output file (appending) and the
  FIFO. Without those variables, or when the writer does not come up within 10 s, it says so on
  stderr and the job runs unlogged. It installs no trap unless `install_trap=True` (for a script
  with no EXIT trap of its own).
- `logging_epilogue()` (`grid_log_stop`) must run on every way out of the script: call it from the
  script's EXIT trap (the renderer's `grid_cleanup`, first thing, so its `wait` never waits on the
  copy) and it is harmless to call twice. It puts the output back on the output file alone, lets
  `tee` pass on what it holds, then stops the writer, which delivers what it still buffers within
  `GRID_LOGGER_DRAIN_SECONDS` (default 10) and exits; it waits at most that plus 5 s.

What it never does: fail or hang the job. The writer holds the FIFO open for reading before the FIFO
appears under its name, the shell opens it read-write then write-only (no open can block), and `tee
-p` drops the FIFO and goes on writing the output file if the writer dies. The token is removed
from the environment the steps see. Variables and functions it defines start with `grid_log`.
"""

from __future__ import annotations

from grid_logger import environment as env

#: The variables the fragment reads (set by the supervisor, see `grid_logger.environment`).
ENV_NAMES = env.ALL
#: How long the prologue waits for the writer's FIFO, in tenths of a second.
START_TENTHS = 100

_PROLOGUE = r"""# Job logs: a copy of the job's output goes to the grid logger through a FIFO (grid-logger write).
grid_log_pid=""
grid_log_tee_pid=""
grid_log_fifo=""
grid_log_out=""
grid_log_pipe=""
grid_log_stop() {
  local grid_log_tries=0 grid_log_limit
  [ -n "$grid_log_pid" ] || return 0
  exec 1>&"$grid_log_out" 2>&1
  exec {grid_log_pipe}>&-
  while kill -0 "$grid_log_tee_pid" 2>/dev/null && [ "$grid_log_tries" -lt 50 ]; do
    sleep 0.1
    grid_log_tries=$((grid_log_tries + 1))
  done
  kill -TERM "$grid_log_pid" 2>/dev/null || true
  grid_log_limit=$(( (${%(drain)s:-10} + 5) * 10 ))
  grid_log_tries=0
  while kill -0 "$grid_log_pid" 2>/dev/null && [ "$grid_log_tries" -lt "$grid_log_limit" ]; do
    sleep 0.1
    grid_log_tries=$((grid_log_tries + 1))
  done
  kill -KILL "$grid_log_pid" 2>/dev/null || true
  rm -f -- "$grid_log_fifo"
  grid_log_pid=""
}
if [ -n "${%(url)s:-}" ] && [ -n "${%(token)s:-}" ]; then
  if exec {grid_log_out}>>/dev/stdout; then
    grid_log_fifo="${TMPDIR:-/tmp}/grid-log.${SLURM_JOB_ID:-$$}.$$.fifo"
    grid_log_pid="$(
      "${%(writer)s:-grid-logger}" write --pipe "$grid_log_fifo" --watch-pid "$$" \
        </dev/null >>"/dev/fd/$grid_log_out" 2>&1 &
      echo "$!"
    )"
    grid_log_tries=0
    while [ ! -p "$grid_log_fifo" ] && kill -0 "$grid_log_pid" 2>/dev/null && [ "$grid_log_tries" -lt %(start)d ]; do
      sleep 0.1
      grid_log_tries=$((grid_log_tries + 1))
    done
    if [ -p "$grid_log_fifo" ] && exec {grid_log_rw}<>"$grid_log_fifo" && exec {grid_log_pipe}>"$grid_log_fifo"; then
      exec {grid_log_rw}>&-
      exec > >(exec tee -p -a "/dev/fd/$grid_log_out" 1>&"$grid_log_pipe" 2>>"/dev/fd/$grid_log_out") 2>&1
      grid_log_tee_pid=$!
    else
      echo "grid-logger: the log writer did not start: this job's output is not streamed" >&2
      kill -KILL "$grid_log_pid" 2>/dev/null || true
      rm -f -- "$grid_log_fifo"
      grid_log_pid=""
    fi
  else
    echo "grid-logger: the job's output cannot be copied: it is not streamed" >&2
  fi
else
  echo "grid-logger: no log service configured for this job: its output is not streamed" >&2
fi
unset %(token)s
"""


def logging_prologue(*, install_trap: bool = False) -> str:
    """Bash that starts the job's log stream (see the module's contract)."""
    text = _PROLOGUE % {
        "url": env.URL,
        "token": env.TOKEN,
        "writer": env.WRITER,
        "drain": env.DRAIN_SECONDS,
        "start": START_TENTHS,
    }
    if install_trap:
        text += "trap grid_log_stop EXIT\n"
    return text


def logging_epilogue() -> str:
    """Bash that ends the job's log stream: delivers what is buffered, then stops the writer."""
    return "grid_log_stop\n"
