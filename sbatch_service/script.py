"""A small builder of bash scripts in which every workflow value is single-quoted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def quote(value: str | int) -> str:
    """Single-quote a value for bash, always (shlex.quote's algorithm without its bare-word shortcut).

    Inside single quotes nothing is special; a quote in the value closes the string, adds an escaped
    quote and reopens it, so no value can end its quoting. The result is also valid POSIX sh.
    """
    text = str(value)
    return "'" + text.replace("'", "'\"'\"'") + "'"


def printf_file(content: str, target: str, append: bool = False) -> str:
    """A command writing `content` exactly into `target` (a bash word) with the printf builtin.

    The builtin keeps the content out of any process's arguments (`ps`), and the content is one
    quoted word, so nothing in it is expanded.
    """
    return f"printf '%s' {quote(content)} {'>>' if append else '>'}{target}"


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

    def raw(self, text: str) -> None:
        """Add text as it is, without indentation (for quoted words spanning several lines)."""
        self._lines.append(text)

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
