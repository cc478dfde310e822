"""Refusals of a workflow: each problem names the offending field, so customers can fix it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem in a workflow: where (dotted path, `[i]` for list items) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field or '<workflow>'}: {self.message}"


class WorkflowError(ValueError):
    """A workflow was refused; `errors` names every offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def dotted_path(parts: Sequence[int | str]) -> str:
    """`["steps", 0, "run"]` as `steps[0].run`, the form every refusal uses."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text
