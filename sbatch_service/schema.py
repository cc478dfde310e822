"""The customer GraphQL schema (`schema.graphql`) and input coercion through its types.

A workflow reaches the service in two ways: the `$job` variable of GraphQL `submit`, which
graphql-core coerces through the `Job` input type, and a file given to `grid-sbatch render`.
`coerce_input` applies graphql-core's coercion to a parsed file, and the GraphQL endpoint checks
each input object variable with it before executing, so both paths give the same verdict with the
same field-named messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLNonNull,
    GraphQLSchema,
    ListValueNode,
    ObjectFieldNode,
    ObjectValueNode,
    ValueNode,
    build_schema,
    get_named_type,
    is_input_object_type,
    is_list_type,
    is_non_null_type,
)
from graphql.execution.values import input_is_nested_too_deeply
from graphql.language.parser import MAX_NESTING_DEPTH
from graphql.pyutils import Undefined, did_you_mean, suggestion_list
from graphql.utilities import coerce_input_value, validate_input_literal, validate_input_value

from sbatch_service.errors import FieldError, WorkflowError, dotted_path

SCHEMA_SDL = resources.files("sbatch_service").joinpath("schema.graphql").read_text(encoding="utf-8")
SCHEMA: GraphQLSchema = build_schema(SCHEMA_SDL)

TOO_DEEP = f"nested too deeply (more than {MAX_NESTING_DEPTH} levels of objects and lists)"


def input_type(name: str) -> GraphQLInputObjectType:
    """An input object type of the schema (`Job`, `Module`, ...)."""
    found = SCHEMA.get_type(name)
    if not isinstance(found, GraphQLInputObjectType):
        raise KeyError(f"no input type {name} in schema.graphql")
    return found


JOB_INPUT: GraphQLInputType = GraphQLNonNull(input_type("Job"))
MODULE_INPUT: GraphQLInputType = GraphQLNonNull(input_type("Module"))

# Keys that published workflows carry where the schema has no such field. DeepSquare's own CLI parses
# YAML into Go structs, which silently drops them, so they are accepted, ignored and reported.
MISPLACED: dict[tuple[str, str], str] = {
    (
        "Step",
        "network",
    ): "ignored: network belongs in run (steps[].run.network), as the reference ignores it here",
    (
        "StepRunResources",
        "gpus",
    ): "ignored: a step asks for GPUs with gpusPerTask, as the reference ignores gpus here",
    ("StepRun", "mountHome"): "ignored: mountHome belongs in run.container, as the reference ignores it here",
    (
        "JobResources",
        "gpusPerTask",
    ): "ignored: the job asks for GPUs with resources.gpus (gpusPerTask belongs to a step's resources),"
    " as the reference's CLI ignores it here; without resources.gpus the job gets no GPU",
}


def _named_input_object(type_: Any) -> GraphQLInputObjectType | None:
    named = get_named_type(type_)
    return named if isinstance(named, GraphQLInputObjectType) else None


def _is_list(type_: Any) -> bool:
    while is_non_null_type(type_):
        type_ = type_.of_type
    return is_list_type(type_)


def strip_misplaced(value: object, type_: GraphQLInputType) -> tuple[Any, list[FieldError]]:
    """`value` (plain JSON data) without the MISPLACED keys, and one warning naming each removed key.

    The input is not modified. Values that are not of the expected shape are left for coercion to refuse.
    """
    warnings: list[FieldError] = []
    try:
        if input_is_nested_too_deeply(value, type_):
            return value, warnings
    except RecursionError:
        return value, warnings

    def clean(item: object, item_type: Any, path: list[str | int]) -> object:
        owner = _named_input_object(item_type)
        if owner is None:
            return item
        if isinstance(item, list) and _is_list(item_type):
            return [clean(element, item_type_of(item_type), [*path, i]) for i, element in enumerate(item)]
        if not isinstance(item, dict):
            return item
        result: dict[object, object] = {}
        for key, field_value in item.items():
            message = MISPLACED.get((owner.name, key)) if isinstance(key, str) else None
            if message is not None and key not in owner.fields:
                warnings.append(FieldError(dotted_path([*path, key]), message))
                continue
            field: GraphQLInputField | None = owner.fields.get(key) if isinstance(key, str) else None
            result[key] = field_value if field is None else clean(field_value, field.type, [*path, key])
        return result

    return clean(value, type_, []), warnings


def item_type_of(type_: Any) -> Any:
    """The element type of a (possibly non-null) list type."""
    while is_non_null_type(type_):
        type_ = type_.of_type
    return type_.of_type if is_list_type(type_) else type_


def strip_misplaced_literal(node: ValueNode, type_: GraphQLInputType) -> tuple[ValueNode, list[FieldError]]:
    """The same removal on an input written inline in the query text (a GraphQL AST value)."""
    warnings: list[FieldError] = []

    def clean(item: ValueNode, item_type: Any, path: list[str | int]) -> ValueNode:
        owner = _named_input_object(item_type)
        if owner is None:
            return item
        if isinstance(item, ListValueNode) and _is_list(item_type):
            values = tuple(clean(v, item_type_of(item_type), [*path, i]) for i, v in enumerate(item.values))
            return ListValueNode(values=values, loc=item.loc)
        if not isinstance(item, ObjectValueNode):
            return item
        fields = []
        for field_node in item.fields:
            key = field_node.name.value
            message = MISPLACED.get((owner.name, key))
            if message is not None and key not in owner.fields:
                warnings.append(FieldError(dotted_path([*path, key]), message))
                continue
            field = owner.fields.get(key)
            if field is not None:
                field_node = ObjectFieldNode(
                    name=field_node.name,
                    value=clean(field_node.value, field.type, [*path, key]),
                    loc=field_node.loc,
                )
            fields.append(field_node)
        return ObjectValueNode(fields=tuple(fields), loc=item.loc)

    return clean(node, type_, []), warnings


def coerce_input(value: object, type_: GraphQLInputType) -> Any:
    """`value` coerced through `type_` exactly as graphql-core coerces a variable, or WorkflowError.

    The result holds only the fields that `value` has (plus the schema's defaults), as plain
    dicts and lists.
    """
    try:
        if input_is_nested_too_deeply(value, type_):
            raise WorkflowError([FieldError("", TOO_DEEP)])
        coerced = coerce_input_value(value, type_)
        if coerced is not Undefined:
            return coerced
        problems = _input_problems(value, type_)
    except RecursionError:
        raise WorkflowError([FieldError("", TOO_DEEP)]) from None
    raise WorkflowError(problems or [FieldError("", f"not a valid {type_}")])


def _input_problems(value: object, type_: GraphQLInputType) -> list[FieldError]:
    """Every reason why graphql-core refuses `value` as a `type_`, each naming its field."""
    problems: list[FieldError] = []

    def on_error(error: GraphQLError, path: list[str | int]) -> None:
        problems.append(_describe(error.message, path, type_, lambda: _keys_at(value, path)))

    validate_input_value(value, type_, on_error)
    return problems


def literal_problems(node: ValueNode, type_: GraphQLInputType) -> list[FieldError]:
    """Why graphql-core refuses a value written inline in the query text, each naming its field."""
    problems: list[FieldError] = []

    def on_error(error: GraphQLError, path: list[str | int]) -> None:
        nodes = error.nodes or []
        names = [n.name.value for n in nodes if isinstance(n, ObjectFieldNode)]
        problems.append(_describe(error.message, path, type_, lambda: names))

    validate_input_literal(node, type_, on_error)
    return problems


def _keys_at(value: object, path: Sequence[str | int]) -> list[str]:
    for part in path:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return [str(key) for key in value] if isinstance(value, dict) else []


def _object_type_at(type_: GraphQLInputType, path: Sequence[str | int]) -> GraphQLInputObjectType | None:
    """The input object type of the value at `path` (GraphQL takes a non-list value as a list of one)."""
    current: Any = type_
    for part in path:
        while is_non_null_type(current) or (is_list_type(current) and not isinstance(part, int)):
            current = current.of_type
        if isinstance(part, int):
            if not is_list_type(current):
                return None
            current = current.of_type
        elif is_input_object_type(current) and part in current.fields:
            current = current.fields[part].type
        else:
            return None
    named = get_named_type(current)
    return named if isinstance(named, GraphQLInputObjectType) else None


def _describe(
    message: str, path: list[str | int], type_: GraphQLInputType, keys: Callable[[], Iterable[str]]
) -> FieldError:
    """A graphql-core message as a FieldError; an unknown or missing field is named in the path."""
    where = dotted_path(path)
    owner = _object_type_at(type_, path)
    if owner is not None:
        unknown = f"Expected value of type '{owner.name}' not to include unknown field '"
        if message.startswith(unknown):
            rest = message[len(unknown) :]
            names = [k for k in keys() if k not in owner.fields and rest.startswith(f"{k}'")]
            if names:
                name = max(names, key=len)
                hint = did_you_mean(suggestion_list(name, list(owner.fields)))
                return FieldError(
                    dotted_path([*path, name]), f"Field '{name}' is not defined by type '{owner.name}'.{hint}"
                )
        required = f"Expected value of type '{owner.name}' to include required field '"
        if message.startswith(required):
            name = message[len(required) :].split("'", 1)[0]
            if name in owner.fields:
                return FieldError(
                    dotted_path([*path, name]),
                    f"Field '{name}' of required type '{owner.fields[name].type}' was not provided.",
                )
    if message.startswith("Expected value of non-null type ") and message.endswith(" not to be None."):
        message = message.removesuffix(" not to be None.") + " not to be null."
    return FieldError(where, message)


def drop_unknown(value: object, type_: GraphQLInputType) -> Any:
    """`value` without any key its input type does not define, at every level.

    This is how the reference reads a module.yaml: YAML into Go structs, unknown keys dropped.
    """

    def clean(item: object, item_type: Any) -> object:
        owner = _named_input_object(item_type)
        if owner is None:
            return item
        if isinstance(item, list) and _is_list(item_type):
            return [clean(element, item_type_of(item_type)) for element in item]
        if not isinstance(item, dict):
            return item
        return {
            key: clean(field_value, owner.fields[key].type)
            for key, field_value in item.items()
            if isinstance(key, str) and key in owner.fields
        }

    return clean(value, type_)
