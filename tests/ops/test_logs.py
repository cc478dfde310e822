"""Log setup: JSON lines by default, readable lines on a terminal, levels, library warnings, redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from supervisor.logs import configure_logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_by_default_with_level_filtering_and_redaction() -> None:
    out = io.StringIO()  # not a terminal, as under systemd
    configure_logging("warning", "auto", out)
    log = structlog.get_logger("supervisor")
    log.info("not shown")
    log.warning("shown", job_id="0x01", password="hunter2", private_key="abc", signed_challenge="x")
    logging.getLogger("asyncssh").info("library chatter")
    logging.getLogger("asyncssh").warning("library trouble %s", "here")
    lines = entries(out)
    assert [line["event"] for line in lines] == ["shown", "library trouble here"]
    assert lines[0]["job_id"] == "0x01" and lines[0]["level"] == "warning"
    assert lines[0]["password"] == lines[0]["private_key"] == lines[0]["signed_challenge"] == "[redacted]"
    assert "hunter2" not in out.getvalue()
    assert lines[1]["logger"] == "asyncssh" and lines[1]["level"] == "warning"


def test_debug_level_shows_debug_lines() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", out)
    structlog.get_logger("supervisor").debug("details")
    assert entries(out)[0]["level"] == "debug"


def test_console_lines_on_a_terminal() -> None:
    out = Terminal()
    configure_logging("info", "auto", out)
    structlog.get_logger("supervisor").info("job submitted to Slurm", slurm_job_id=42)
    text = out.getvalue()
    assert not text.startswith("{")
    assert "job submitted to Slurm" in text and "slurm_job_id" in text and "42" in text
