"""The supervisor's sbatch client when the service restarts between its Challenge and its GetSBatch."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from supervisor.chain.keys import Signer
from supervisor.sbatch.client import CHALLENGE_ATTEMPTS, SbatchClient, ScriptRefused
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid
from tests.fixtures.sbatch import SbatchProcess, start_sbatch_service

WORKFLOW = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512, "gpus": 0},
    "steps": [{"name": "hello", "run": {"command": "echo restarted"}}],
}


class RestartingService:
    """The real service, restarted on the same ports and database whenever the test asks."""

    def __init__(self, workdir: Path, grid: Grid) -> None:
        self.workdir, self.grid = workdir, grid
        self.process = self._start()

    def _start(self, graphql_port: int | None = None, grpc_port: int | None = None) -> SbatchProcess:
        return start_sbatch_service(
            self.workdir,
            rpc_url=self.grid.anvil.http_url,
            metascheduler_address=self.grid.deployment.meta_scheduler,
            graphql_port=graphql_port,
            grpc_port=grpc_port,
        )

    def restart(self, *, lose_challenges: bool = False) -> None:
        """Stop and start again; with `lose_challenges`, as a service that keeps none across a restart."""
        self.process.stop()
        if lose_challenges:
            with sqlite3.connect(self.process.database) as db:
                db.execute("DELETE FROM challenges")
        self.process = self._start(graphql_port=self.process.graphql_port, grpc_port=self.process.grpc_port)


class ChallengeThenRestart(SbatchClient):
    """The real client, with the service restarted right after it is given its first challenges."""

    def __init__(
        self, service: RestartingService, restarts: int, signer: Signer, *, lose_challenges: bool = True
    ) -> None:
        super().__init__(service.process.grpc_target, signer, timeout_s=10)
        self.service, self.restarts_left, self.challenges = service, restarts, 0
        self.lose_challenges = lose_challenges

    async def _challenge(self) -> bytes:
        challenge = await super()._challenge()
        self.challenges += 1
        if self.restarts_left > 0:
            self.restarts_left -= 1
            self.service.restart(lose_challenges=self.lose_challenges)
        return challenge


@pytest.fixture
def scheduled_job(grid: Grid, tmp_path: Path) -> tuple[RestartingService, bytes, str]:
    provider, customer = grid.providers[0], grid.customers[0]
    if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
        grid.register_provider(provider)
    service = RestartingService(tmp_path / "sbatch", grid)
    key = service.process.submit(WORKFLOW)
    definition = (*WORKED_EXAMPLE_DEFINITION[:4], key, *WORKED_EXAMPLE_DEFINITION[5:])
    job_id = grid.request_job(customer, 200 * CREDIT, definition)
    grid.schedule(job_id, provider)
    return service, job_id, key


async def test_a_challenge_lost_in_a_restart_is_asked_again(
    grid: Grid, scheduled_job: tuple[RestartingService, bytes, str]
) -> None:
    service, job_id, key = scheduled_job
    client = ChallengeThenRestart(service, restarts=1, signer=Signer(grid.providers[0]))
    try:
        fetched = await client.fetch("0x" + job_id.hex(), grid.customers[0].address, key)
    finally:
        await client.close()
        service.process.stop()
    assert "echo restarted" in fetched.script
    assert client.challenges == 2


async def test_a_challenge_kept_across_a_restart_is_used_as_it_is(
    grid: Grid, scheduled_job: tuple[RestartingService, bytes, str]
) -> None:
    service, job_id, key = scheduled_job
    client = ChallengeThenRestart(
        service, restarts=1, signer=Signer(grid.providers[0]), lose_challenges=False
    )
    try:
        fetched = await client.fetch("0x" + job_id.hex(), grid.customers[0].address, key)
    finally:
        await client.close()
        service.process.stop()
    assert "echo restarted" in fetched.script
    assert client.challenges == 1


async def test_a_provider_refused_every_time_is_refused_after_the_bounded_retries(
    grid: Grid, scheduled_job: tuple[RestartingService, bytes, str]
) -> None:
    service, job_id, key = scheduled_job
    stranger = Signer(grid.providers[2])  # not the job's provider: UNAUTHENTICATED at every try
    client = ChallengeThenRestart(service, restarts=0, signer=stranger)
    try:
        with pytest.raises(ScriptRefused, match="refused this provider"):
            await client.fetch("0x" + job_id.hex(), grid.customers[0].address, key)
    finally:
        await client.close()
        service.process.stop()
    assert client.challenges == CHALLENGE_ATTEMPTS
