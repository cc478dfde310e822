"""`grid-sbatch serve` end to end: submit over GraphQL, restart, fetch over gRPC as the job's provider."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from grid_protocol.proto import sbatch_pb2
from grid_protocol.proto.sbatch_client import stubs
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid
from tests.fixtures.sbatch import sign_challenge, start_sbatch_service

WORKFLOW = {
    "resources": {"tasks": 1, "cpusPerTask": 2, "memPerCpu": 1024, "gpus": 1},
    "steps": [{"name": "hello", "run": {"command": "echo hello"}}],
}


def test_a_restart_loses_nothing_and_the_provider_gets_the_script(grid: Grid, tmp_path: Path) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    grid.register_provider(provider)
    service = start_sbatch_service(
        tmp_path, rpc_url=grid.anvil.http_url, metascheduler_address=grid.deployment.meta_scheduler
    )
    try:
        key = service.submit(WORKFLOW)
    finally:
        service.stop()
    assert service.process.returncode == 0, "SIGTERM ends the service cleanly"

    definition = (*WORKED_EXAMPLE_DEFINITION[:4], key, *WORKED_EXAMPLE_DEFINITION[5:])
    job_id = grid.request_job(customer, 200 * CREDIT, definition)
    grid.schedule(job_id, provider)

    restarted = start_sbatch_service(
        tmp_path, rpc_url=grid.anvil.http_url, metascheduler_address=grid.deployment.meta_scheduler
    )
    try:
        with grpc.insecure_channel(restarted.grpc_target) as channel:
            auth_api, sbatch_api = stubs(channel)
            challenge = auth_api.Challenge(sbatch_pb2.ChallengeRequest(), timeout=30).challenge
            answer = sbatch_api.GetSBatch(
                sbatch_pb2.GetSBatchRequest(
                    batch_location_hash=key,
                    signed_challenge=sign_challenge(provider, challenge),
                    challenge=challenge,
                    provider_address=bytes.fromhex(provider.address[2:]),
                    customer_address=bytes.fromhex(customer.address[2:]),
                    job_id="0x" + job_id.hex(),
                ),
                timeout=30,
            )
    finally:
        restarted.stop()
    assert hashlib.sha256(answer.sbatch.encode()).hexdigest() == key
    assert "/bin/sh -c 'echo hello'" in answer.sbatch
