"""Checks of a workflow document before anything recursive reads it: its depth and its Unicode.

The JSON and YAML parsers, graphql-core and pydantic all recurse, so a document nested thousands of
levels deep would end in a RecursionError; a lone surrogate (`"\\ud800"` in JSON) is a Python string
that cannot be encoded as UTF-8, so it would fail wherever the text is written out (the script
store, a response). Both are refused here, before parsing where possible, each with a message that
names the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from sbatch_service.errors import FieldError, WorkflowError

SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON string (escapes included, without backtracking) or one bracket: enough to count the depth.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENING = frozenset("[{")
MAX_REPORTED = 20


def too_deep_message(limit: int) -> str:
    return f"nested deeper than {limit} levels of objects and lists"


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether the JSON text nests objects and lists deeper than `limit`, found without parsing it."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        first = match.group()[0]
        if first in _OPENING:
            depth += 1
            if depth > limit:
                return True
        elif first != '"':
            depth -= 1
    return False


def load_json(text: str, limit: int, where: str = "") -> Any:
    """`json.loads`, refusing a document nested deeper than `limit` before it is parsed."""
    if json_depth_exceeds(text, limit):
        raise WorkflowError([FieldError(where, too_deep_message(limit))])
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise WorkflowError([FieldError(where, f"invalid JSON: {error}")]) from None
    except RecursionError:
        raise WorkflowError([FieldError(where, too_deep_message(limit))]) from None


def load_yaml(
    text: str,
    limit: int,
    where: str = "",
    what: str = "invalid YAML",
    aliases: str = "YAML aliases are not allowed in a workflow",
) -> Any:
    """`yaml.safe_load`, refusing aliases and a document nested deeper than `limit` first.

    The event parser does not recurse (the composer does), so its events measure the depth safely.
    Aliases are refused because a few bytes of them can expand into a huge object.
    """
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise WorkflowError([FieldError(where, aliases)])
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limit:
                    raise WorkflowError([FieldError(where, too_deep_message(limit))])
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise WorkflowError([FieldError(where, f"{what}: {error}")]) from None
    except RecursionError:
        raise WorkflowError([FieldError(where, too_deep_message(limit))]) from None


def printable(text: str) -> str:
    """Text with any lone surrogate written as its escape, so that it can be encoded and shown."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _surrogate_message(text: str, what: str) -> str:
    found = SURROGATE.search(text)
    code = ord(found.group()) if found else 0
    return f"{what} a lone surrogate (\\u{code:04x}), which is not valid Unicode"


def document_problems(data: object, limit: int, path: str = "") -> list[FieldError]:
    """Where a parsed document nests deeper than `limit` or holds a lone surrogate (keys included).

    Iterative, so that any depth is measured without recursion.
    """
    problems: list[FieldError] = []
    stack: list[tuple[object, str, int]] = [(data, path, 0)]
    while stack and len(problems) < MAX_REPORTED:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if SURROGATE.search(value):
                problems.append(FieldError(where, _surrogate_message(value, "contains")))
            continue
        if not isinstance(value, dict | list):
            continue
        if depth + 1 > limit:
            problems.append(FieldError(where, too_deep_message(limit)))
            continue
        children: list[tuple[object, str]] = []
        if isinstance(value, dict):
            for key, item in value.items():
                name = str(key)
                if SURROGATE.search(name):
                    problems.append(FieldError(where, _surrogate_message(name, "has a key with")))
                    name = printable(name)
                children.append((item, f"{where}.{name}" if where else name))
        else:
            children = [(item, f"{where}[{index}]") for index, item in enumerate(value)]
        stack.extend((item, child, depth + 1) for item, child in reversed(children))
    return problems


def check_document(data: object, limit: int) -> None:
    """Raise WorkflowError naming every field of `document_problems`."""
    problems = document_problems(data, limit)
    if problems:
        raise WorkflowError(problems)
