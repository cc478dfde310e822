"""The subset of Go's text/template (with sprig's text functions) that module.yaml files use.

The reference renders a module.yaml with `{Job, Step}` before parsing it. Supported: text and
`{{ }}` actions with `{{-`/`-}}` trimming, comments, pipelines with `|`, parenthesised
sub-pipelines, field paths on `.` and on variables (`$`, `$x`), string, number and boolean literals,
`if`/`else if`/`else`, `range` (with `$i, $v :=`), `with`, and the functions in FUNCTIONS. Fields are
matched without regard to case, so Go names (`CPUsPerTask`, `MemPerCPU`, `URL`) find the workflow's
camelCase keys. Nothing here reads the environment or the file system.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_OUTPUT = 4 * 1024 * 1024
MAX_RANGE_ITERATIONS = 100_000


class TemplateError(ValueError):
    """The template cannot be parsed or executed; the message says where."""


# ---- values


def _truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, dict, tuple)):
        return len(value) > 0
    return True


def _text(value: Any) -> str:
    """A value as Go's fmt prints it."""
    if value is None:
        return "<no value>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _field(value: Any, name: str) -> Any:
    if value is None:
        raise TemplateError(f"nil pointer evaluating .{name}")
    if isinstance(value, dict):
        if name in value:
            return value[name]
        lowered = name.lower()
        for key, item in value.items():
            if isinstance(key, str) and key.lower() == lowered:
                return item
        return None
    raise TemplateError(f"can't evaluate field {name} in type {type(value).__name__}")


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, as Go's yaml.v3 writes them, so indenting keeps them."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text and not any(c in text for c in "\r\t") and text == text.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_text)


def _to_yaml(value: Any) -> str:
    """YAML of a value; "" for Go's zero values (nil, "", 0, false, empty lists and maps)."""
    if not _truthy(value):
        return ""
    dumped = yaml.dump(value, Dumper=_Dumper, default_flow_style=False, sort_keys=False, allow_unicode=True)
    return dumped.removesuffix("\n").removesuffix("\n...")


def _indent(spaces: int, text: Any) -> str:
    pad = " " * int(spaces)
    return pad + _text(text).replace("\n", "\n" + pad)


def _printf(form: str, *args: Any) -> str:
    values = list(args)
    out = []
    position = 0
    for match in re.finditer(r"%([-+# 0]*\d*(?:\.\d+)?)([a-zA-Z%])", form):
        out.append(form[position : match.start()])
        position = match.end()
        flags, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        value = values.pop(0) if values else None
        if verb == "q":
            out.append(_go_quote(_text(value)))
        elif verb in "di" and isinstance(value, int):
            out.append(("%" + flags + "d") % value)
        elif verb in "fFeEgG" and isinstance(value, (int, float)):
            out.append(("%" + flags + verb) % value)
        else:
            out.append(("%" + flags + "s") % _text(value))
    out.append(form[position:])
    return "".join(out)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        try:
            return bool(op(a, b))
        except TypeError:
            raise TemplateError(f"incompatible types for comparison: {a!r}, {b!r}") from None

    return compare


def _number(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def _and(*values: Any) -> Any:
    for value in values:
        if not _truthy(value):
            return value
    return values[-1] if values else None


def _or(*values: Any) -> Any:
    for value in values:
        if _truthy(value):
            return value
    return values[-1] if values else None


def _index(collection: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(collection, list):
            position = _number(key)
            if not 0 <= position < len(collection):
                raise TemplateError(f"index out of range: {position}")
            collection = collection[position]
        elif isinstance(collection, dict):
            collection = collection.get(key)
        else:
            raise TemplateError(f"can't index item of type {type(collection).__name__}")
    return collection


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "toJson": lambda v: json.dumps(v, ensure_ascii=False),
    "toString": _text,
    "indent": _indent,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "default": lambda default, value=None: value if _truthy(value) else default,
    "empty": lambda value=None: not _truthy(value),
    "coalesce": lambda *values: next((v for v in values if _truthy(v)), None),
    "ternary": lambda yes, no, condition: yes if _truthy(condition) else no,
    "quote": lambda *values: " ".join(_go_quote(_text(v)) for v in values if v is not None),
    "squote": lambda *values: " ".join(f"'{_text(v)}'" for v in values if v is not None),
    "upper": lambda text: _text(text).upper(),
    "lower": lambda text: _text(text).lower(),
    "title": lambda text: _text(text).title(),
    "trim": lambda text: _text(text).strip(),
    "trimSuffix": lambda suffix, text: _text(text).removesuffix(_text(suffix)),
    "trimPrefix": lambda prefix, text: _text(text).removeprefix(_text(prefix)),
    "replace": lambda old, new, text: _text(text).replace(_text(old), _text(new)),
    "contains": lambda part, text: _text(part) in _text(text),
    "hasPrefix": lambda prefix, text: _text(text).startswith(_text(prefix)),
    "hasSuffix": lambda suffix, text: _text(text).endswith(_text(suffix)),
    "repeat": lambda count, text: _text(text) * max(0, min(_number(count), 10_000)),
    "join": lambda separator, items: _text(separator).join(_text(i) for i in (items or [])),
    "splitList": lambda separator, text: _text(text).split(_text(separator)),
    "list": lambda *items: list(items),
    "len": lambda value: len(value) if value is not None else 0,
    "index": _index,
    "eq": lambda a, *others: any(a == b for b in others),
    "ne": lambda a, b: a != b,
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
    "and": _and,
    "or": _or,
    "not": lambda value: not _truthy(value),
    "add": lambda *values: sum(_number(v) for v in values),
    "add1": lambda value: _number(value) + 1,
    "sub": lambda a, b: _number(a) - _number(b),
    "mul": lambda *values: _product(values),
    "div": lambda a, b: _number(a) // _number(b) if _number(b) else 0,
    "mod": lambda a, b: _number(a) % _number(b) if _number(b) else 0,
    "atoi": _number,
    "int": _number,
    "printf": _printf,
    "print": lambda *values: "".join(_text(v) for v in values),
    "println": lambda *values: " ".join(_text(v) for v in values) + "\n",
    "b64enc": lambda text: base64.b64encode(_text(text).encode()).decode(),
    "b64dec": lambda text: base64.b64decode(_text(text).encode()).decode(errors="replace"),
}


def _product(values: tuple[Any, ...]) -> int:
    result = 1
    for value in values:
        result *= _number(value)
    return result


# ---- parsing

TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<declare>:=)
    | (?P<assign>=)
    | (?P<punct>[|(),])
    | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)


@dataclass
class _Token:
    kind: str
    text: str
    start: int = 0
    end: int = 0


def _tokens(source: str) -> list[_Token]:
    found = []
    position = 0
    while position < len(source):
        if source[position:].strip() == "":
            break
        match = TOKEN.match(source, position)
        if match is None or match.end() == position:
            raise TemplateError(f"unexpected {source[position:].strip()[:20]!r} in action")
        kind = match.lastgroup or ""
        found.append(_Token(kind, match.group(kind), match.start(kind), match.end(kind)))
        position = match.end()
    return found


@dataclass
class _Operand:
    kind: str
    value: Any
    path: tuple[str, ...] = ()


@dataclass
class _Pipeline:
    declare: list[str]
    commands: list[list[_Operand]]
    assign: bool = False


@dataclass
class _Node:
    kind: str
    text: str = ""
    pipeline: _Pipeline | None = None
    body: list[_Node] = field(default_factory=list)
    otherwise: list[_Node] = field(default_factory=list)


def _unescape(literal: str) -> str:
    try:
        value = json.loads(literal)
    except json.JSONDecodeError:
        raise TemplateError(f"bad string literal {literal}") from None
    return str(value)


class _PipelineParser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise TemplateError("unexpected end of action")
        self.position += 1
        return token

    def pipeline(self, closing: str | None = None) -> _Pipeline:
        declare: list[str] = []
        assign = False
        start = self.position
        names = []
        while (token := self.peek()) is not None and token.kind == "variable" and "." not in token.text:
            names.append(self.take().text)
            following = self.peek()
            if following is not None and following.kind == "punct" and following.text == ",":
                self.take()
                continue
            break
        following = self.peek()
        if names and following is not None and following.kind in ("declare", "assign"):
            self.take()
            declare = names
            assign = following.kind == "assign"
        else:
            self.position = start
        commands = [self.command(closing)]
        while (token := self.peek()) is not None and token.kind == "punct" and token.text == "|":
            self.take()
            commands.append(self.command(closing))
        return _Pipeline(declare, commands, assign)

    def command(self, closing: str | None) -> list[_Operand]:
        operands = []
        while (token := self.peek()) is not None:
            if token.kind == "punct" and token.text in ("|", ")"):
                break
            operands.append(self.operand())
        if not operands:
            raise TemplateError("empty command")
        return operands

    def operand(self) -> _Operand:
        token = self.take()
        if token.kind == "string":
            return _Operand("literal", _unescape(token.text))
        if token.kind == "raw":
            return _Operand("literal", token.text[1:-1])
        if token.kind == "number":
            return _Operand("literal", float(token.text) if "." in token.text else int(token.text))
        if token.kind == "field":
            return _Operand("field", None, tuple(p for p in token.text.split(".") if p))
        if token.kind == "variable":
            name, *names = token.text.split(".")
            return _Operand("variable", name, tuple(names))
        if token.kind == "word":
            if token.text in ("true", "false"):
                return _Operand("literal", token.text == "true")
            if token.text == "nil":
                return _Operand("literal", None)
            if "." in token.text:
                raise TemplateError(f"unexpected {token.text}")
            return _Operand("function", token.text)
        if token.kind == "punct" and token.text == "(":
            inner = self.pipeline(")")
            closing = self.take()
            if closing.text != ")":
                raise TemplateError("missing )")
            following = self.peek()
            chained: tuple[str, ...] = ()
            if following is not None and following.kind == "field" and following.start == closing.end:
                chained = tuple(p for p in self.take().text.split(".") if p)
            return _Operand("pipeline", inner, chained)
        raise TemplateError(f"unexpected {token.text!r}")


ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


def _parse(source: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node, list[_Node]]] = []
    current = root
    position = 0
    pending_trim = False
    for match in ACTION.finditer(source):
        text = source[position : match.start()]
        if pending_trim:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            current.append(_Node("text", text))
        position = match.end()
        pending_trim = bool(match.group(3))
        content = match.group(2).strip()
        if content.startswith("/*"):
            if not content.endswith("*/"):
                raise TemplateError("unclosed comment")
            continue
        keyword, _, rest = content.partition(" ")
        rest = rest.strip()
        if keyword in ("if", "range", "with"):
            node = _Node(keyword, pipeline=_PipelineParser(_tokens(rest)).pipeline())
            current.append(node)
            stack.append((node, current))
            current = node.body
        elif keyword == "else":
            if not stack:
                raise TemplateError("unexpected else")
            node, parent = stack[-1]
            if rest.startswith(("if ", "with ")):
                inner_keyword, _, inner_rest = rest.partition(" ")
                inner = _Node(inner_keyword, pipeline=_PipelineParser(_tokens(inner_rest)).pipeline())
                node.otherwise = [inner]
                # A chained `else if` ends with the `end` of the first `if`.
                stack[-1] = (inner, parent)
                current = inner.body
            else:
                current = node.otherwise
        elif keyword == "end":
            if not stack:
                raise TemplateError("unexpected end")
            _, current = stack.pop()
        elif keyword in ("define", "template", "block", "break", "continue"):
            raise TemplateError(f"{keyword} is not supported in modules")
        else:
            tokens = _tokens(content)
            current.append(_Node("action", pipeline=_PipelineParser(tokens).pipeline()))
    if stack:
        raise TemplateError("unexpected EOF: an if, range or with has no end")
    tail = source[position:]
    if pending_trim:
        tail = tail.lstrip(" \t\r\n")
    if tail:
        current.append(_Node("text", tail))
    return root


# ---- execution


@dataclass
class _State:
    variables: list[dict[str, Any]]
    output: list[str]
    size: int = 0

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.variables):
            if name in scope:
                return scope[name]
        raise TemplateError(f"undefined variable {name}")

    def set(self, name: str, value: Any, assign: bool) -> None:
        if assign:
            for scope in reversed(self.variables):
                if name in scope:
                    scope[name] = value
                    return
            raise TemplateError(f"undefined variable {name}")
        self.variables[-1][name] = value

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise TemplateError(f"the rendered module is longer than {MAX_OUTPUT} characters")
        self.output.append(text)


def _evaluate_operand(operand: _Operand, dot: Any, state: _State) -> Any:
    if operand.kind == "literal":
        return operand.value
    if operand.kind == "field":
        value = dot
    elif operand.kind == "variable":
        value = state.lookup(operand.value)
    elif operand.kind == "pipeline":
        value = _evaluate(operand.value, dot, state)
    else:
        return _call(operand.value, [], dot, state)
    for name in operand.path:
        value = _field(value, name)
    return value


def _call(name: str, arguments: list[Any], dot: Any, state: _State) -> Any:
    function = FUNCTIONS.get(name)
    if function is None:
        raise TemplateError(f'function "{name}" not defined')
    try:
        return function(*arguments)
    except TemplateError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise TemplateError(f"error calling {name}: {error}") from None


def _evaluate(pipeline: _Pipeline, dot: Any, state: _State) -> Any:
    value: Any = None
    piped = False
    for command in pipeline.commands:
        head = command[0]
        if head.kind == "function":
            arguments = [_evaluate_operand(o, dot, state) for o in command[1:]]
            if piped:
                arguments.append(value)
            value = _call(head.value, arguments, dot, state)
        else:
            if len(command) > 1 or piped:
                raise TemplateError("can't give argument to non-function")
            value = _evaluate_operand(head, dot, state)
        piped = True
    if pipeline.declare and len(pipeline.declare) == 1:
        state.set(pipeline.declare[0], value, pipeline.assign)
    return value


def _execute(nodes: list[_Node], dot: Any, state: _State) -> None:
    for node in nodes:
        if node.kind == "text":
            state.write(node.text)
        elif node.kind == "action":
            assert node.pipeline is not None
            value = _evaluate(node.pipeline, dot, state)
            if not node.pipeline.declare:
                state.write(_text(value))
        elif node.kind in ("if", "with"):
            assert node.pipeline is not None
            state.variables.append({})
            value = _evaluate(node.pipeline, dot, state)
            if _truthy(value):
                _execute(node.body, value if node.kind == "with" else dot, state)
            else:
                _execute(node.otherwise, dot, state)
            state.variables.pop()
        elif node.kind == "range":
            _range(node, dot, state)


def _range(node: _Node, dot: Any, state: _State) -> None:
    assert node.pipeline is not None
    declared = node.pipeline.declare
    collection = _evaluate(_Pipeline([], node.pipeline.commands), dot, state)
    if isinstance(collection, dict):
        pairs = [(key, collection[key]) for key in sorted(collection)]
    elif isinstance(collection, list):
        pairs = list(enumerate(collection))
    elif isinstance(collection, int) and not isinstance(collection, bool):
        pairs = [(i, i) for i in range(min(collection, MAX_RANGE_ITERATIONS))]
    elif collection is None:
        pairs = []
    else:
        raise TemplateError(f"range can't iterate over {_text(collection)}")
    if not pairs:
        _execute(node.otherwise, dot, state)
        return
    for key, item in pairs[:MAX_RANGE_ITERATIONS]:
        scope: dict[str, Any] = {}
        if len(declared) == 1:
            scope[declared[0]] = item
        elif len(declared) == 2:
            scope[declared[0]], scope[declared[1]] = key, item
        state.variables.append(scope)
        _execute(node.body, item, state)
        state.variables.pop()


def render_template(source: str, data: Any) -> str:
    """`source` executed with `data` as `.` and `$`."""
    nodes = _parse(source)
    state = _State([{"$": data}], [])
    _execute(nodes, data, state)
    return "".join(state.output)
