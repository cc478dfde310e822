"""A small builder of bash scripts in which every workflow value is single-quoted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def quote(value: str | int) -> str:
    """Single-quote a value for bash, always (shlex.quote's algorithm without its bare-word shortcut).

    Inside single quotes nothing is special; a quote in the value closes the string, adds an escaped
    quote and reopens it, so no value can end its quoting.
    """
    text = str(value)
    return "'" + text.replace("'", "'\"'\"'") + "'"


class ScriptBuilder:
    """Collects lines with indentation; callers pass already-quoted words."""

    def __init__(self, indent: str = "  ") -> None:
        self._lines: list[str] = []
        self._depth = 0
        self._indent = indent

    def line(self, text: str = "") -> None:
        self._lines.append(f"{self._indent * self._depth}{text}" if text else "")

    def lines(self, block: str) -> None:
        """Add a fixed block (no workflow values inside), re-indented to the current depth."""
        for text in block.strip("\n").splitlines():
            self.line(text)

    @contextmanager
    def block(self, opening: str, closing: str) -> Iterator[None]:
        self.line(opening)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            self.line(closing)

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"
