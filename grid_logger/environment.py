"""The job environment the writer reads: the contract between the supervisor, the batch script
(`sbatch_service.logging_render`) and `grid-logger write`. Names only, so any side imports it."""

from __future__ import annotations

#: `host:port` of the log service (the sbatch service's `grid_logger_url`, or the supervisor's override).
URL = "GRID_LOGGER_URL"
#: The log's name: the job id, 0x + 64 lowercase hex digits.
LOG_NAME = "GRID_LOGGER_LOG_NAME"
#: The log's owner: the job's customer, 0x + 40 lowercase hex digits.
USER = "GRID_LOGGER_USER"
#: The job's write token (`grid_logger.signing`), minted by the supervisor with the provider key.
TOKEN = "GRID_LOGGER_TOKEN"
#: `1` (default) for TLS, `0` for clear text.
TLS = "GRID_LOGGER_TLS"
#: CA certificate (PEM) on the compute nodes that the service's certificate must chain to; unset:
#: the system's roots.
CA_FILE = "GRID_LOGGER_CA_FILE"
#: The name checked in the service's certificate, when it is not the URL's host.
SERVER_NAME = "GRID_LOGGER_SERVER_NAME"
#: The FIFO the writer creates (the batch script picks it; the writer's --pipe wins).
PIPE = "GRID_LOGGER_PIPE"
#: The writer's buffer while the service cannot be reached: lines and bytes (oldest dropped first).
BUFFER_LINES = "GRID_LOGGER_BUFFER_LINES"
BUFFER_BYTES = "GRID_LOGGER_BUFFER_BYTES"
#: Seconds the writer keeps delivering its buffer after it is told to stop.
DRAIN_SECONDS = "GRID_LOGGER_DRAIN_SECONDS"
#: The writer program on the compute nodes (`grid-logger`, run as `<writer> write`).
WRITER = "GRID_LOGGER_WRITER"

ALL = (
    URL,
    LOG_NAME,
    USER,
    TOKEN,
    TLS,
    CA_FILE,
    SERVER_NAME,
    PIPE,
    BUFFER_LINES,
    BUFFER_BYTES,
    DRAIN_SECONDS,
    WRITER,
)

DEFAULT_BUFFER_LINES = 20_000
DEFAULT_BUFFER_BYTES = 8 * 1024 * 1024
DEFAULT_DRAIN_SECONDS = 10.0
