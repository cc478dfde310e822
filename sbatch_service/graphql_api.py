"""The customer API: GraphQL at /graphql (the SDL of `schema.graphql`, served with graphql-core) and
`GET /health`.

Every refusal is a GraphQL error whose `extensions.type` says what happened: `validation` (with
`field`, the dotted path inside the input, and `errors`, every problem) for a bad request or
workflow, `forbidden` and `not_found` for the `job` query, `internal` for a fault of the service.
A refused `$job` variable is described by the same function that checks `grid-sbatch render`
input, so both paths name the same fields in the same words.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLInputType,
    GraphQLResolveInfo,
    GraphQLSchema,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    ValueNode,
    default_field_resolver,
    execute,
    get_named_type,
    get_operation_ast,
    is_input_object_type,
    is_input_type,
    parse,
    type_from_ast,
    validate,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sbatch_service.documents import document_problems, json_depth_exceeds, too_deep_message
from sbatch_service.errors import FieldError, WorkflowError
from sbatch_service.models import Limits, validate_module
from sbatch_service.modules import ModuleFetcher, NoModules, prepare
from sbatch_service.names import NameSource, RandomNames
from sbatch_service.renderer import RenderOptions, render
from sbatch_service.schema import (
    SCHEMA,
    coerce_input,
    literal_problems,
    strip_misplaced,
    strip_misplaced_literal,
)
from sbatch_service.storage import ScriptStore

log = structlog.get_logger("sbatch_service.graphql")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

NOT_EXPOSED = (
    "this service does not expose stored scripts: only the provider that holds a job fetches its "
    "script (over gRPC)"
)


@dataclass(frozen=True)
class SubmitService:
    """What the resolvers need: validation limits, render options, the store and the scripts' TTL.

    `expose_stored_scripts` turns on the `job` query, which gives any stored script to whoever
    knows its key; keys are public on chain and scripts may hold customers' secrets.
    """

    store: ScriptStore
    limits: Limits
    render_options: RenderOptions
    ttl_seconds: float
    names: NameSource = field(default_factory=RandomNames)
    expose_stored_scripts: bool = False
    fetcher: ModuleFetcher = field(default_factory=NoModules)

    def submit(self, workflow: object) -> tuple[str, list[FieldError]]:
        """The storage key of the rendered script, and the warnings about what was ignored."""
        checked = prepare(workflow, self.limits, self.fetcher)
        script = render(checked.job, self.names, self.render_options)
        return self.store.put(script, self.ttl_seconds), checked.warnings

    def stored_script(self, key: str) -> str | None:
        return self.store.get(key)

    def check_module(self, module: object) -> str:
        try:
            validate_module(module, self.limits)
        except WorkflowError as error:
            return str(error)
        return "valid"


@dataclass
class RequestContext:
    """What one GraphQL request collects besides its data: warnings about ignored keys."""

    warnings: list[FieldError] = field(default_factory=list)

    def add(self, warnings: list[FieldError]) -> None:
        known = {(w.field, w.message) for w in self.warnings}
        self.warnings.extend(w for w in warnings if (w.field, w.message) not in known)


def validation_error(problems: list[FieldError], **location: Any) -> GraphQLError:
    """One GraphQL error for a refused input: the first field in `field`, all of them in `errors`."""
    return GraphQLError(
        "; ".join(str(p) for p in problems),
        extensions={
            "type": "validation",
            "field": problems[0].field,
            "errors": [{"field": p.field, "message": p.message} for p in problems],
        },
        **location,
    )


class Resolvers:
    """The root fields; every other field is read from its parent value."""

    def __init__(self, service: SubmitService) -> None:
        self.service = service
        self.handlers: dict[str, Callable[..., Any]] = {
            "Query.health": self.health,
            "Query.job": self.job,
            "Mutation.submit": self.submit,
            "Mutation.validate": self.validate,
        }
        for type_name in ("Query", "Mutation"):
            root = SCHEMA.get_type(type_name)
            for name in getattr(root, "fields", {}):
                if f"{type_name}.{name}" not in self.handlers:
                    raise LookupError(f"schema.graphql field {type_name}.{name} has no resolver")

    def __call__(self, source: Any, info: GraphQLResolveInfo[Any], **args: Any) -> Any:
        handler = self.handlers.get(f"{info.parent_type.name}.{info.field_name}")
        if handler is None:
            return default_field_resolver(source, info, **args)
        if handler == self.submit:
            return handler(info.context, **args)
        return handler(**args)

    def health(self) -> str:
        return "ok"

    async def job(self, batchLocationHash: str) -> str:
        if not self.service.expose_stored_scripts:
            raise GraphQLError(NOT_EXPOSED, extensions={"type": "forbidden"})
        script = await asyncio.to_thread(self.service.stored_script, batchLocationHash)
        if script is None:
            raise GraphQLError(
                "no stored script under this key (unknown or expired)", extensions={"type": "not_found"}
            )
        log.info("stored script read", key=batchLocationHash)
        return script

    async def submit(self, context: RequestContext | None, job: object) -> str:
        try:
            key, warnings = await asyncio.to_thread(self.service.submit, job)
        except WorkflowError as error:
            raise validation_error(error.errors) from None
        except Exception:
            log.exception("submit failed")
            raise GraphQLError("internal error", extensions={"type": "internal"}) from None
        if context is not None:
            context.add(warnings)
        log.info("script stored", key=key)
        return key

    async def validate(self, module: object) -> str:
        return await asyncio.to_thread(self.service.check_module, module)


def _literal_inputs(
    schema: GraphQLSchema, document: DocumentNode
) -> Iterator[tuple[ValueNode, GraphQLInputType]]:
    """Input objects written inline as arguments of root fields, with their declared types."""
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        root = schema.get_root_type(definition.operation)
        if root is None:
            continue
        for selection in definition.selection_set.selections:
            if not isinstance(selection, FieldNode) or selection.name.value not in root.fields:
                continue
            arguments = root.fields[selection.name.value].args
            for argument in selection.arguments or ():
                declared = arguments.get(argument.name.value)
                if (
                    declared is not None
                    and isinstance(argument.value, ObjectValueNode | ListValueNode)
                    and is_input_object_type(get_named_type(declared.type))
                ):
                    yield argument.value, declared.type


def _strip_literals(schema: GraphQLSchema, document: DocumentNode) -> list[FieldError]:
    """Remove the misplaced keys from inputs written inline, as from variables; their warnings."""
    warnings: list[FieldError] = []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        root = schema.get_root_type(definition.operation)
        if root is None:
            continue
        for selection in definition.selection_set.selections:
            if not isinstance(selection, FieldNode) or selection.name.value not in root.fields:
                continue
            arguments = root.fields[selection.name.value].args
            for argument in selection.arguments or ():
                declared = arguments.get(argument.name.value)
                if declared is not None and isinstance(argument.value, ObjectValueNode | ListValueNode):
                    cleaned, found = strip_misplaced_literal(argument.value, declared.type)
                    # graphql-core's AST nodes are plain objects; its typing marks them read-only.
                    object.__setattr__(argument, "value", cleaned)
                    warnings.extend(found)
    return warnings


def _strip_variables(
    schema: GraphQLSchema, operation: OperationDefinitionNode, variables: dict[str, Any]
) -> tuple[dict[str, Any], list[FieldError]]:
    """The variables without the misplaced keys of their input objects; the warnings."""
    cleaned = dict(variables)
    warnings: list[FieldError] = []
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        type_ = type_from_ast(schema, definition.type)
        if name not in cleaned or not is_input_type(type_) or not is_input_object_type(get_named_type(type_)):
            continue
        cleaned[name], found = strip_misplaced(cleaned[name], type_)
        warnings.extend(found)
    return cleaned, warnings


def _inside(error: GraphQLError, node: ValueNode) -> bool:
    span = node.loc
    return (
        bool(error.nodes)
        and span is not None
        and all(
            n.loc is not None and span.start <= n.loc.start and n.loc.end <= span.end
            for n in error.nodes or ()
        )
    )


def _document_errors(schema: GraphQLSchema, document: DocumentNode) -> list[GraphQLError]:
    """The document's validation errors; those inside an inline input become one field-named error."""
    errors = validate(schema, document)
    if not errors:
        return []
    for node, type_ in _literal_inputs(schema, document):
        problems = literal_problems(node, type_)
        if problems:
            errors = [e for e in errors if not _inside(e, node)]
            errors.append(validation_error(problems, nodes=node))
    return errors


def _variable_errors(
    schema: GraphQLSchema, operation: OperationDefinitionNode, variables: Mapping[str, Any]
) -> list[GraphQLError]:
    """Input object variables that graphql-core would refuse, each as one field-named error.

    They are checked by `coerce_input`, the function that checks `grid-sbatch render` input.
    """
    errors = []
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        type_ = type_from_ast(schema, definition.type)
        if (
            name not in variables
            or not is_input_type(type_)
            or not is_input_object_type(get_named_type(type_))
        ):
            continue
        try:
            coerce_input(variables[name], type_)
        except WorkflowError as error:
            errors.append(validation_error(error.errors, nodes=definition))
    return errors


def format_error(error: GraphQLError) -> dict[str, Any]:
    """The error as the response shows it; a fault inside a resolver never shows its details."""
    original = error.original_error
    if error.path is not None and original is not None and not isinstance(original, GraphQLError):
        log.error("resolver failed", path=error.path, exc_info=original)
        error = GraphQLError("internal error", path=error.path, extensions={"type": "internal"})
    formatted: dict[str, Any] = {**error.formatted}
    extensions: dict[str, Any] = {**(formatted.get("extensions") or {})}
    if "type" not in extensions:
        # Errors of the request itself: syntax, unknown fields in the query, missing variables.
        extensions.update(
            {"type": "validation", "field": "", "errors": [{"field": "", "message": error.message}]}
        )
    formatted["extensions"] = extensions
    return formatted


def _result(
    data: Any, errors: list[GraphQLError] | None, warnings: list[FieldError] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if errors:
        body["errors"] = [format_error(e) for e in errors]
    if warnings:
        body["extensions"] = {"warnings": [{"field": w.field, "message": w.message} for w in warnings]}
    return body


def _request_error(message: str, status_code: int) -> JSONResponse:
    error = GraphQLError(message)
    return JSONResponse({"errors": [format_error(error)]}, status_code=status_code)


def _unicode_problems(params: dict[str, Any], max_nesting: int) -> list[FieldError]:
    """Lone surrogates anywhere in the request (`"\\ud800"` in its JSON): such text cannot be
    encoded, neither to store a script nor to answer, so it is refused before anything reads it.
    Variables are checked like a workflow file, with the same field names."""
    problems: list[FieldError] = []
    for name in ("query", "operationName"):
        for problem in document_problems(params.get(name), max_nesting):
            problems.append(FieldError("", f"{name}: {problem.message}"))
    variables = params.get("variables")
    if isinstance(variables, dict):
        for problem in document_problems(list(variables), max_nesting):
            problems.append(FieldError("", f"variable names: {problem.message}"))
        for value in variables.values():
            problems.extend(document_problems(value, max_nesting))
    return problems


class BodyTooLarge(Exception):
    """A request body went over the limit while it was being read."""


class GraphQLEndpoint:
    """GraphQL over HTTP: POST with a JSON body, or GET with query parameters for queries only."""

    def __init__(self, service: SubmitService) -> None:
        self.schema = SCHEMA
        self.resolvers = Resolvers(service)
        self.max_nesting = service.limits.max_nesting

    def _too_deep(self, text: str, wrapping: int) -> JSONResponse | None:
        """A validation error for JSON nested too deeply to parse safely (json.loads recurses).

        The workflow sits `wrapping` levels down (the body, then `variables`), so the limit and
        the message are those of a workflow file: both paths give the same verdict.
        """
        if not json_depth_exceeds(text, self.max_nesting + wrapping):
            return None
        problem = FieldError("", too_deep_message(self.max_nesting))
        return JSONResponse({"data": None, "errors": [format_error(validation_error([problem]))]})

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            params: Any = dict(request.query_params)
            if "variables" in params:
                refusal = self._too_deep(params["variables"], 1)
                if refusal is not None:
                    return refusal
                try:
                    params["variables"] = json.loads(params["variables"])
                except ValueError:
                    return _request_error("variables must be JSON", 400)
        else:
            try:
                raw = await request.body()
                text = raw.decode(json.detect_encoding(raw))
            except BodyTooLarge:
                return PlainTextResponse("request body too large", status_code=413)
            except UnicodeDecodeError:
                return _request_error("the request body must be a JSON object", 400)
            refusal = self._too_deep(text, 2)
            if refusal is not None:
                return refusal
            try:
                params = json.loads(text)
            except ValueError:
                return _request_error("the request body must be a JSON object", 400)
        if not isinstance(params, dict):
            return _request_error("the request body must be a JSON object", 400)
        problems = _unicode_problems(params, self.max_nesting + 2)
        if problems:
            return JSONResponse({"data": None, "errors": [format_error(validation_error(problems))]})
        query, variables, operation_name = (
            params.get("query"),
            params.get("variables"),
            params.get("operationName"),
        )
        if not isinstance(query, str):
            return _request_error("query must be a string", 400)
        if variables is None:
            variables = {}
        if not isinstance(variables, dict):
            return _request_error("variables must be a JSON object", 400)
        if operation_name is not None and not isinstance(operation_name, str):
            return _request_error("operationName must be a string", 400)
        status, body = await self.run(query, variables, operation_name, request.method == "GET")
        return JSONResponse(body, status_code=status)

    async def run(
        self, query: str, variables: dict[str, Any], operation_name: str | None, read_only: bool
    ) -> tuple[int, dict[str, Any]]:
        """The HTTP status and the GraphQL response of one request."""
        try:
            document = parse(query)
        except GraphQLError as error:
            return 200, {"errors": [format_error(error)]}
        context = RequestContext()
        context.add(_strip_literals(self.schema, document))
        errors = _document_errors(self.schema, document)
        if errors:
            return 200, {"errors": [format_error(e) for e in errors]}
        operation = get_operation_ast(document, operation_name)
        if operation is not None:
            if read_only and operation.operation is not OperationType.QUERY:
                return 405, {"errors": [format_error(GraphQLError("mutations are accepted over POST only"))]}
            variables, found = _strip_variables(self.schema, operation, variables)
            context.add(found)
            errors = _variable_errors(self.schema, operation, variables)
            if errors:
                return 200, _result(None, errors, context.warnings)
        result = execute(
            self.schema,
            document,
            variable_values=variables,
            operation_name=operation_name,
            field_resolver=self.resolvers,
            context_value=context,
        )
        if inspect.isawaitable(result):
            result = await result
        return 200, _result(result.data, result.errors, context.warnings)


class BodyLimit:
    """Refuses request bodies above a size with 413 before they are read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


async def _health(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def build_app(service: SubmitService) -> ASGIApp:
    """The ASGI application: /graphql (POST, and GET for queries) and /health."""
    graphql = GraphQLEndpoint(service)
    app = Starlette(
        routes=[Route("/health", _health), Route("/graphql", graphql.handle, methods=["GET", "POST"])]
    )
    # GraphQL wraps the workflow in a query and variables; JSON escapes can double a string's size.
    return BodyLimit(app, max_bytes=2 * service.limits.max_workflow_bytes + 64 * 1024)
