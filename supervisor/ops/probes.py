"""Active probes of the services the work loop only touches when it has work for them.

With no job in flight the daemon never runs a Slurm command or calls the sbatch service, so its own
health flags would stay green through an outage; metrics and the doctor ask these instead.
"""

from __future__ import annotations

import grpc

from grid_protocol.proto import sbatch_pb2
from grid_protocol.proto.sbatch_client import async_stubs
from supervisor.config import SbatchServiceSettings
from supervisor.grpc_tls import aio_channel


async def probe_sbatch(settings: SbatchServiceSettings) -> str | None:
    """None when the sbatch service hands out a challenge (its supervisor API is up), else the failure."""
    try:
        channel = aio_channel(settings.grpc_target, settings.client_tls)
    except (OSError, ValueError) as exc:
        return str(exc)
    try:
        auth, _ = async_stubs(channel)
        answer = await auth.Challenge(sbatch_pb2.ChallengeRequest(), timeout=settings.timeout_seconds)
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details() or 'no details'}"
    finally:
        await channel.close()
    if not answer.challenge:
        return "the service answered an empty challenge"
    return None
