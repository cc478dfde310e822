"""Wiring of `grid-logger serve`: the store, the chain reader, the gRPC server, the upkeep tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

import grpc
import structlog

from grid_logger.chain import JobCache, JobReader
from grid_logger.service import LoggerServicer
from grid_logger.settings import Settings
from grid_logger.store import LogStore, load_master_key
from grid_protocol.proto import log_pb2_grpc
from supervisor.grpc_tls import add_port
from supervisor.ops.notify import notify_address, send

log = structlog.get_logger("grid_logger")

#: A request is one line plus its names; room for the largest line setting.
MESSAGE_OVERHEAD = 4096


@dataclass
class RunningLogger:
    settings: Settings
    server: grpc.aio.Server
    port: int
    servicer: LoggerServicer
    jobs: JobReader
    tasks: list[asyncio.Task[None]]

    async def stop(self, grace: float = 5.0) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop(grace)
        for appender in self.servicer.registry.appenders():
            appender.close()
        await self.jobs.close()


async def start_logger(settings: Settings) -> RunningLogger:
    if not settings.metascheduler_address:
        raise ValueError("metascheduler_address is required (GRID_LOGGER_METASCHEDULER_ADDRESS)")
    store = LogStore(settings.storage_path, load_master_key(settings.master_key_file))
    reader = JobReader(settings.rpc_url, settings.metascheduler_address, settings.abi_dir)
    servicer = LoggerServicer(settings, store, JobCache(reader, settings.job_cache_seconds))
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_line_bytes + MESSAGE_OVERHEAD),
            # As the reference: ping after 10 s idle, drop a peer silent for 20 s.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    log_pb2_grpc.add_LoggerAPIServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = add_port(server, settings.listen_address, settings.tls)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen_address}")
    await server.start()
    tasks = [
        asyncio.create_task(servicer.sync_forever()),
        asyncio.create_task(_purge_forever(servicer, settings)),
    ]
    log.info(
        "grid-logger ready",
        port=port,
        tls="mutual" if settings.tls_client_ca_file else "on" if settings.tls else "off",
    )
    return RunningLogger(settings, server, port, servicer, reader, tasks)


async def _purge_forever(servicer: LoggerServicer, settings: Settings) -> None:
    while True:
        try:
            await servicer.purge()
        except OSError as error:
            log.warning("purge failed", error=str(error))
        await asyncio.sleep(settings.purge_interval_seconds)


async def serve_forever(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; tells systemd when ready."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_logger(settings)
    host = settings.listen_address.rsplit(":", 1)[0]
    print(f"grid-logger listening on {host}:{running.port}", flush=True)
    address = notify_address(os.environ)
    send("READY=1", address)
    try:
        await stop.wait()
    finally:
        send("STOPPING=1", address)
        await running.stop()
