"""Log setup: structlog, JSON for the journal, readable lines on a terminal, secrets never written.

The job id is bound to every line logged while a job is being handled (`bound_contextvars`).
Every URL in a line, the libraries' lines and formatted tracebacks included, keeps only its
scheme, host and port: hosted RPC endpoints carry their API key in the path or the query.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from supervisor.redaction import redact_text

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_SECRET_KEYS = ("private_key", "password", "secret", "signature", "signed_challenge", "api_key", "apikey")
_PLAIN = (int, float, bool, type(None))


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A last guard: values under secret-sounding keys are never written."""
    for key in list(event):
        if any(marker in key.lower() for marker in _SECRET_KEYS):
            event[key] = "[redacted]"
    return event


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return [_redacted(item) for item in value]
    # Renderers fall back to repr() for other objects (exceptions, URLs, settings).
    shown = repr(value)
    return redact_text(shown) if "://" in shown else value


def _redact_urls(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Runs after tracebacks are formatted, so URLs in exception messages are caught too."""
    for key, value in event.items():
        event[key] = _redacted(value)
    return event


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", stream: Any = None
) -> None:
    """structlog for the daemon's lines; the libraries' own warnings go through the same renderer."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            _redact_urls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_urls,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Libraries speak at INFO about every connection and request: only their warnings are kept.
    root.setLevel(max(LEVELS[level], logging.WARNING))
