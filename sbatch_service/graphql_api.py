"""The customer API: GraphQL `submit(job: Job!): String!` at /graphql and `GET /health`.

`Job` is a scalar holding the workflow object exactly as the DeepSquare clients send it in the
`$job` variable; the service's own validation then reports problems with the offending field in
`extensions` (`type` = `validation`), rather than GraphQL's generic coercion errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NewType

import strawberry
import structlog
from graphql import GraphQLError, ValueNode
from graphql.utilities import value_from_ast_untyped
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL

from sbatch_service.models import Limits, WorkflowError, validate_workflow
from sbatch_service.names import NameSource, RandomNames
from sbatch_service.renderer import RenderOptions, render
from sbatch_service.storage import ScriptStore

log = structlog.get_logger("sbatch_service.graphql")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _parse_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> object:
    return value_from_ast_untyped(node, variables)


JobScalar = strawberry.scalar(
    NewType("Job", object),
    name="Job",
    description="A workflow (resources, env, steps) in the DeepSquare format; see WORKFLOW.md.",
    serialize=lambda value: value,
    parse_value=lambda value: value,
    parse_literal=_parse_literal,
)


@dataclass(frozen=True)
class SubmitService:
    """What `submit` needs: validation limits, render options, the store and the scripts' TTL."""

    store: ScriptStore
    limits: Limits
    render_options: RenderOptions
    ttl_seconds: float
    names: NameSource = field(default_factory=RandomNames)

    def submit(self, workflow: object) -> str:
        job = validate_workflow(workflow, self.limits)
        script = render(job, self.names, self.render_options)
        return self.store.put(script, self.ttl_seconds)


def build_schema(service: SubmitService) -> strawberry.Schema:
    @strawberry.type
    class Query:
        @strawberry.field(description="Answers ok while the service runs.")  # type: ignore[untyped-decorator]
        def health(self) -> str:
            return "ok"

    @strawberry.type
    class Mutation:
        @strawberry.mutation(  # type: ignore[untyped-decorator]
            description="Validate, render and store a workflow; returns the storage key."
        )
        async def submit(self, job: JobScalar) -> str:  # type: ignore[valid-type]
            try:
                key = await asyncio.to_thread(service.submit, job)
            except WorkflowError as error:
                first = error.errors[0]
                raise GraphQLError(
                    str(error),
                    extensions={
                        "type": "validation",
                        "field": first.field,
                        "errors": [{"field": e.field, "message": e.message} for e in error.errors],
                    },
                ) from None
            except Exception:
                log.exception("submit failed")
                raise GraphQLError("internal error", extensions={"type": "internal"}) from None
            log.info("script stored", key=key)
            return key

    return strawberry.Schema(query=Query, mutation=Mutation)


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
                raise ValueError("request body too large")
            return message

        await self.app(scope, limited_receive, send)


async def _health(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def build_app(service: SubmitService) -> ASGIApp:
    """The ASGI application: /graphql (POST, and GET for queries) and /health."""
    graphql = GraphQL(build_schema(service), graphql_ide=None)
    app = Starlette(routes=[Route("/health", _health), Route("/graphql", graphql)])
    # GraphQL wraps the workflow in a query and variables; JSON escapes can double a string's size.
    return BodyLimit(app, max_bytes=2 * service.limits.max_workflow_bytes + 64 * 1024)
