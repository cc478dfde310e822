"""Wiring of `grid-sbatch serve`: the store, the chain reader, the GraphQL and gRPC servers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

import grpc
import structlog
import uvicorn

from sbatch_service.auth import NonceBook, PeerRateLimiter
from sbatch_service.chain import JobReader
from sbatch_service.graphql_api import SubmitService, build_app
from sbatch_service.grpc_api import ScriptGate, start_grpc_server
from sbatch_service.settings import Settings
from sbatch_service.storage import ChallengeStore, ScriptStore

log = structlog.get_logger("sbatch_service")

PURGE_INTERVAL_SECONDS = 300.0
STARTUP_TIMEOUT_SECONDS = 30.0


@dataclass
class RunningService:
    """Both servers up; `graphql_port` and `grpc_port` are the bound ports (useful with port 0)."""

    settings: Settings
    store: ScriptStore
    challenges: ChallengeStore
    nonces: NonceBook
    jobs: JobReader
    http: uvicorn.Server
    http_task: asyncio.Task[None]
    grpc_server: grpc.aio.Server
    graphql_port: int
    grpc_port: int

    async def stop(self) -> None:
        self.http.should_exit = True
        await self.grpc_server.stop(grace=5)
        await self.http_task
        await self.jobs.close()
        self.store.close()
        self.challenges.close()


async def start_service(settings: Settings) -> RunningService:
    if not settings.metascheduler_address:
        raise ValueError("metascheduler_address is required (GRID_SBATCH_METASCHEDULER_ADDRESS)")
    store = ScriptStore(settings.database)
    challenges = ChallengeStore(settings.database)
    jobs = JobReader(settings.rpc_url, settings.metascheduler_address, settings.abi_dir)
    nonces = NonceBook(
        settings.challenge_ttl_seconds,
        max_outstanding=settings.challenge_max_outstanding,
        record=challenges,
    )
    limiter = PeerRateLimiter(
        settings.challenge_rate_per_second,
        settings.challenge_burst,
        max_peers=settings.challenge_rate_max_peers,
    )
    gate = ScriptGate(nonces, jobs, store, settings.running_retention_seconds)
    grpc_server, grpc_port = await start_grpc_server(
        f"{settings.grpc_host}:{settings.grpc_port}",
        nonces,
        gate,
        settings.logger_url,
        limiter=limiter,
        tls=settings.grpc_tls,
    )
    submit = SubmitService(
        store,
        settings.limits,
        settings.render_options,
        settings.script_ttl_seconds,
        expose_stored_scripts=settings.expose_stored_scripts,
        fetcher=settings.module_fetcher,
    )
    if settings.expose_stored_scripts:
        log.warning("the GraphQL job query gives any stored script to whoever knows its key")
    config = uvicorn.Config(
        build_app(submit),
        host=settings.graphql_host,
        port=settings.graphql_port,
        log_level="warning",
        lifespan="off",
    )
    http = uvicorn.Server(config)
    http_task = asyncio.create_task(http.serve())
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_SECONDS
    while not http.started:
        if http_task.done():
            await grpc_server.stop(grace=None)
            http_task.result()
            raise OSError(f"GraphQL server did not start on {settings.graphql_host}:{settings.graphql_port}")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("GraphQL server did not start in time")
        await asyncio.sleep(0.05)
    graphql_port = http.servers[0].sockets[0].getsockname()[1]
    log.info(
        "sbatch service ready",
        graphql_port=graphql_port,
        grpc_port=grpc_port,
        grpc_tls="mutual" if settings.grpc_client_ca_file else "on" if settings.grpc_tls else "off",
    )
    return RunningService(
        settings, store, challenges, nonces, jobs, http, http_task, grpc_server, graphql_port, grpc_port
    )


async def serve_forever(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, purging expired scripts now and then."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = await start_service(settings)
    # uvicorn takes the signals while it serves and raises them again when it stops.
    service.http_task.add_done_callback(lambda _: stop.set())
    print(
        f"graphql http://{settings.graphql_host}:{service.graphql_port}/graphql "
        f"grpc {settings.grpc_host}:{service.grpc_port}",
        flush=True,
    )
    try:
        while not stop.is_set():
            purged = await asyncio.to_thread(service.store.purge_expired)
            if purged:
                log.info("expired scripts purged", count=purged)
            await asyncio.to_thread(service.nonces.purge_expired)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PURGE_INTERVAL_SECONDS)
    finally:
        await service.stop()
