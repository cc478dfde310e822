"""Typed access to the generated gRPC stubs, for clients such as the supervisor.

The generated `sbatch_pb2_grpc` module has no type hints; these Protocols give its stubs types.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, cast

import grpc

from grid_protocol.proto import sbatch_pb2, sbatch_pb2_grpc


class AuthAPI(Protocol):
    def Challenge(
        self, request: sbatch_pb2.ChallengeRequest, *, timeout: float | None = None
    ) -> sbatch_pb2.ChallengeResponse: ...


class SBatchAPI(Protocol):
    def GetSBatch(
        self, request: sbatch_pb2.GetSBatchRequest, *, timeout: float | None = None
    ) -> sbatch_pb2.GetSBatchResponse: ...

    def GetSBatches(
        self, request: sbatch_pb2.GetSBatchesRequest, *, timeout: float | None = None
    ) -> sbatch_pb2.GetSBatchesResponse: ...


class AsyncAuthAPI(Protocol):
    def Challenge(
        self, request: sbatch_pb2.ChallengeRequest, *, timeout: float | None = None
    ) -> Awaitable[sbatch_pb2.ChallengeResponse]: ...


class AsyncSBatchAPI(Protocol):
    def GetSBatch(
        self, request: sbatch_pb2.GetSBatchRequest, *, timeout: float | None = None
    ) -> Awaitable[sbatch_pb2.GetSBatchResponse]: ...

    def GetSBatches(
        self, request: sbatch_pb2.GetSBatchesRequest, *, timeout: float | None = None
    ) -> Awaitable[sbatch_pb2.GetSBatchesResponse]: ...


def stubs(channel: grpc.Channel) -> tuple[AuthAPI, SBatchAPI]:
    """Blocking stubs on a `grpc.Channel`."""
    return (
        cast(AuthAPI, sbatch_pb2_grpc.AuthAPIStub(channel)),  # type: ignore[no-untyped-call]
        cast(SBatchAPI, sbatch_pb2_grpc.SBatchAPIStub(channel)),  # type: ignore[no-untyped-call]
    )


def async_stubs(channel: grpc.aio.Channel) -> tuple[AsyncAuthAPI, AsyncSBatchAPI]:
    """Stubs on a `grpc.aio.Channel`; each call is awaited."""
    return (
        cast(AsyncAuthAPI, sbatch_pb2_grpc.AuthAPIStub(channel)),  # type: ignore[no-untyped-call]
        cast(AsyncSBatchAPI, sbatch_pb2_grpc.SBatchAPIStub(channel)),  # type: ignore[no-untyped-call]
    )
