"""Reading logs as a customer: the signed requests of DeepSquare's reader, over grpc.aio.

`sign` is whatever signs raw bytes with EIP-191 for the customer (a `Signer`'s `sign_message`, or
`signing.sign` with a key), so the key itself never has to reach this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol, cast

import grpc

from grid_logger import signing
from grid_protocol.proto import log_pb2, log_pb2_grpc
from supervisor.grpc_tls import ClientTls, aio_channel

Sign = Callable[[bytes], bytes]


class _LoggerStub(Protocol):
    def Read(
        self,
        request: log_pb2.ReadRequest,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float | None = None,
    ) -> grpc.aio.UnaryStreamCall[log_pb2.ReadRequest, log_pb2.ReadResponse]: ...

    def WatchList(
        self, request: log_pb2.WatchListRequest, *, timeout: float | None = None
    ) -> grpc.aio.UnaryStreamCall[log_pb2.WatchListRequest, log_pb2.WatchListResponse]: ...


def stub(channel: grpc.aio.Channel) -> _LoggerStub:
    return cast(_LoggerStub, log_pb2_grpc.LoggerAPIStub(channel))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class LogLine:
    #: Unix nanoseconds, as the writer stamped the line.
    timestamp: int
    data: bytes


def read_request(
    address: str, log_name: str, sign: Sign, timestamp: int | None = None
) -> log_pb2.ReadRequest:
    """A Read signed as the reference reader signs it (timestamp: now, in seconds)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = sign(signing.read_text(address, log_name, stamp))
    return log_pb2.ReadRequest(address=address, log_name=log_name, timestamp=stamp, signed_hash=signature)


def watch_list_request(address: str, sign: Sign, timestamp: int | None = None) -> log_pb2.WatchListRequest:
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = sign(signing.watch_list_text(address, stamp))
    return log_pb2.WatchListRequest(address=address, timestamp=stamp, signed_hash=signature)


def read_metadata(*, follow: bool = True, since_ns: int = 0) -> tuple[tuple[str, str], ...]:
    metadata: list[tuple[str, str]] = []
    if not follow:
        metadata.append(("grid-log-follow", "0"))
    if since_ns > 0:
        metadata.append(("grid-log-since", str(since_ns)))
    return tuple(metadata)


async def read_log(
    target: str,
    tls: ClientTls | None,
    address: str,
    log_name: str,
    sign: Sign,
    *,
    follow: bool = True,
    since_ns: int = 0,
) -> AsyncGenerator[LogLine]:
    """Every line of the log (from `since_ns`); with `follow`, live until the job ends on chain.

    A stream cut by the network (UNAVAILABLE) is opened again, signed anew, from the last line's
    timestamp; lines of that timestamp already given are not given twice.
    """
    seen_at_last: list[bytes] = []
    last = since_ns
    retries = 0
    async with aio_channel(target, tls) as channel:
        api = stub(channel)
        while True:
            call = api.Read(
                read_request(address, log_name, sign), metadata=read_metadata(follow=follow, since_ns=last)
            )
            replay = list(seen_at_last)
            try:
                async for message in call:
                    retries = 0
                    if message.timestamp == last and message.data in replay:
                        replay.remove(message.data)
                        continue
                    if message.timestamp != last:
                        last, seen_at_last = message.timestamp, []
                    seen_at_last.append(message.data)
                    yield LogLine(message.timestamp, message.data)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or retries >= 5:
                    raise
                retries += 1
                await asyncio.sleep(0.5 * retries)


async def watch_list(
    target: str, tls: ClientTls | None, address: str, sign: Sign
) -> AsyncGenerator[list[str]]:
    """The address's log names, now and then each time the service sends them again."""
    async with aio_channel(target, tls) as channel:
        async for message in stub(channel).WatchList(watch_list_request(address, sign)):
            yield list(message.log_names)
