"""The service's systemd unit, hardened like the supervisor's, and the pieces without I/O: the
writer's buffer, timestamps, the since parser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from grid_dev.chain import GridError
from grid_dev.logs import format_line, parse_since
from grid_logger.reader import LogLine
from grid_logger.service import line_timestamp, signed_seconds
from grid_logger.writer import LineBuffer, dropped_notice, seq_ranges

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "grid-logger.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_the_service_hardened_with_its_key_as_a_credential() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["User"] == ["grid-logger"] and s["StateDirectory"] == ["grid-logger"]
    assert any(v.startswith("master.key:") for v in s["LoadCredential"])
    assert "GRID_LOGGER_MASTER_KEY_FILE=%d/master.key" in s["Environment"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
    }.items():
        assert s[key] == [value], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    installed = "/opt/grid-supervisor/venv/bin/grid-logger"
    assert installed in UNIT.read_text()
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace(installed, str(REPO / ".venv" / "bin" / "grid-logger")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None and float(exposure.group(1)) <= 3.0, security.stdout[-2000:]


def test_the_buffer_keeps_the_newest_lines_after_one_notice() -> None:
    buffer = LineBuffer(max_lines=3, max_bytes=1_000)
    for i in range(5):
        buffer.put(f"l{i}".encode(), i)
    batch = buffer.take(0)
    assert batch is not None
    assert [(e.data, e.dropped, e.seq) for e in batch] == [(b"", 2, 1), (b"l2", 0, 2), (b"l3", 0, 3)]
    buffer.put(b"l5", 5)
    buffer.requeue()  # the batch failed: it is the oldest again and makes room first
    again = buffer.take(0)
    assert again is not None
    assert [(e.data, e.dropped, e.seq) for e in again] == [(b"", 3, 2), (b"l3", 0, 3), (b"l4", 0, 4)]
    assert seq_ranges(again) == "2-4"
    buffer.ack()
    last = buffer.take(0)
    assert last is not None and [e.data for e in last] == [b"l5"] and seq_ranges(last) == "5"
    assert buffer.dropped == 3
    assert dropped_notice(1, 3, 1000).startswith(b"grid-logger: 1 line dropped here")


def test_the_buffer_is_bounded_in_bytes_too() -> None:
    buffer = LineBuffer(max_lines=1_000, max_bytes=10)
    for _ in range(4):
        buffer.put(b"abcd", 0)
    batch = buffer.take(0)
    assert batch is not None and [e.data for e in batch] == [b"", b"abcd", b"abcd"]


def test_timestamps() -> None:
    assert signed_seconds(1_700_000_000) == 1_700_000_000
    assert signed_seconds(1_700_000_000_000_000_000) == 1_700_000_000
    now = 1_800_000_000_000_000_000
    assert line_timestamp(0, now, 10) == now
    assert line_timestamp(1_700_000_000, now, 10) == 1_700_000_000_000_000_000  # the reference's seconds
    assert line_timestamp(now + 11, now, 10) == now
    assert line_timestamp(now - 5, now, 10) == now - 5


def test_since_and_the_printed_line() -> None:
    assert parse_since("10m", now=1_000.0) == 400 * 10**9
    assert parse_since("1700000000") == 1_700_000_000 * 10**9
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    with pytest.raises(GridError):
        parse_since("yesterday")
    assert (
        format_line(LogLine(1_700_000_000_123_456_789, b"hello \xff"))
        == "2023-11-14T22:13:20.123456Z hello \ufffd"
    )
