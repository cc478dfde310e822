"""A chaos run on the real stack: kills at random and at each crash point, RPC hangs and cuts,
sbatch service restarts; no job lost, none doubled, every settlement exact."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.chain_layer import TcpProxy
from tests.fixtures.chaos import chaos_run
from tests.fixtures.supervisor import ProviderStack


def test_a_chaos_run_loses_and_doubles_nothing(
    provider_stack: ProviderStack, proxy_factory: Callable[[int], TcpProxy]
) -> None:
    proxy = proxy_factory(provider_stack.grid.anvil.port)
    supervisor = provider_stack.supervisor(rpc_url=proxy.http_url, max_queued_jobs=8)
    try:
        report = chaos_run(provider_stack, proxy, supervisor, jobs=24, seed=14)
    finally:
        supervisor.stop()
    assert report.problems == []
    assert report.events["kill"] + report.events["kill_at_point"] >= 3, report.events
    assert report.events["sbatch_restart"] >= 1 and report.events["rpc_hang"] >= 1, report.events
