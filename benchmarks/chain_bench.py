"""Chain layer figures on a real anvil with the deployed protocol.

1. Latency from the block that makes a job claimable (metaSchedule mined) to the follower's handler
   call, with the WebSocket hint and with polling alone.
2. Transaction sender throughput (transactions mined per second) against a bare loop of
   `send_raw_transaction` over pre-signed transactions, in the same run, as a ratio.

Run: .venv/bin/python benchmarks/chain_bench.py [--samples 15] [--transactions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402
from web3 import Web3  # noqa: E402

from grid_dev.anvil import start_anvil  # noqa: E402
from grid_protocol.jobs import JobStatus  # noqa: E402
from supervisor.chain.contracts import ProtocolContracts, job_id_hex  # noqa: E402
from supervisor.chain.events import ChainEvent  # noqa: E402
from supervisor.chain.follower import FollowerSettings, LogFollower  # noqa: E402
from supervisor.chain.keys import Signer  # noqa: E402
from supervisor.chain.rpc import connect_http  # noqa: E402
from supervisor.chain.sender import SenderSettings, TransactionSender  # noqa: E402
from supervisor.store import Store  # noqa: E402
from tests.fixtures.contracts import CREDIT, anvil_account, deploy_grid  # noqa: E402

SINK = Web3.to_checksum_address("0x000000000000000000000000000000000000dEaD")


class Stopwatch:
    """Handler noting when each meta-scheduling hint reaches it."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def handle(self, event: ChainEvent, store: Store) -> None:
        if event.name == "JobTransitionEvent" and event.args["_to"] == JobStatus.META_SCHEDULED:
            self.seen[str(event.args["_jobId"])] = time.perf_counter()

    def undo(self, event: ChainEvent, store: Store) -> None:
        self.seen.pop(str(event.args.get("_jobId")), None)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   "
        f"max {ordered[-1] * 1000:7.1f} ms   (n={len(ordered)})"
    )


async def latency(
    grid: Any, *, use_hint: bool, samples: int, poll_interval_s: float, tmp: Path
) -> list[float]:
    provider = grid.providers[0]
    w3 = connect_http(grid.anvil.http_url)
    contracts = await ProtocolContracts.discover(w3, grid.deployment.meta_scheduler)
    store = Store.open(tmp / f"latency-{use_hint}.db")
    watch = Stopwatch()
    follower = LogFollower(
        w3,
        store,
        contracts.follower_sources(provider.address),
        watch,
        FollowerSettings(poll_interval_s=poll_interval_s, start_block=grid.w3.eth.block_number),
        ws_url=grid.anvil.ws_url if use_hint else None,
    )
    task = asyncio.create_task(follower.run())
    if use_hint:
        while not follower.health.ws_connected:
            await asyncio.sleep(0.01)
    results: list[float] = []
    for _ in range(samples):
        job_id = await asyncio.to_thread(grid.request_job, grid.customers[0], 200 * CREDIT)
        await asyncio.sleep(random.uniform(0, poll_interval_s))  # no phase lock with the polling period
        started = time.perf_counter()
        await asyncio.to_thread(grid.schedule, job_id, provider)  # returns once the block is mined
        jid = job_id_hex(job_id)
        while jid not in watch.seen:
            await asyncio.sleep(0.001)
        results.append(watch.seen[jid] - started)
        # Recycle the job so the provider's queue stays short.
        await asyncio.to_thread(grid.send, grid.oracle, grid.scheduler.functions.timeoutJob(job_id))
    follower.stop()
    await task
    await w3.provider.disconnect()
    store.close()
    return results


async def sender_throughput(http_url: str, count: int, tmp: Path) -> float:
    w3 = connect_http(http_url)
    store = Store.open(tmp / "sender.db")
    sender = TransactionSender(w3, Signer(anvil_account(11)), store, SenderSettings(poll_interval_s=0.02))
    await sender.start()
    started = time.perf_counter()
    ids = [sender.submit(SINK, value=1, kind="transfer") for _ in range(count)]
    outcomes = await asyncio.gather(*(sender.wait(i) for i in ids))
    elapsed = time.perf_counter() - started
    assert all(o.success for o in outcomes)
    await sender.stop()
    await w3.provider.disconnect()
    store.close()
    return count / elapsed


async def bare_throughput(http_url: str, count: int) -> float:
    w3 = connect_http(http_url)
    account = anvil_account(12)
    chain_id = await w3.eth.chain_id
    nonce = await w3.eth.get_transaction_count(account.address)
    block = await w3.eth.get_block("latest")
    max_fee = 2 * int(block["baseFeePerGas"]) + 10**9
    raws = [
        Account.sign_transaction(
            {
                "chainId": chain_id,
                "nonce": nonce + i,
                "to": SINK,
                "value": 1,
                "gas": 21000,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": 10**9,
                "type": 2,
            },
            account.key,
        ).raw_transaction
        for i in range(count)
    ]
    started = time.perf_counter()
    for raw in raws:
        await w3.eth.send_raw_transaction(raw)
    while await w3.eth.get_transaction_count(account.address) < nonce + count:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    await w3.provider.disconnect()
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--poll-interval", type=float, default=2.0, help="follower polling period (s)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    anvil = start_anvil(extra_args=["--accounts", "15"])
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            grid = await asyncio.to_thread(deploy_grid, anvil)
            await asyncio.to_thread(grid.register_provider, grid.providers[0])
            print(f"anvil {anvil.http_url}; protocol deployed; follower poll interval {args.poll_interval} s")
            options = {"samples": args.samples, "poll_interval_s": args.poll_interval, "tmp": tmp}
            hint = await latency(grid, use_hint=True, **options)
            poll = await latency(grid, use_hint=False, **options)
            print("claimable-job block -> handler call")
            print(f"  with WebSocket hint : {summary(hint)}")
            print(f"  polling alone       : {summary(poll)}")
            sender_rate = await sender_throughput(anvil.http_url, args.transactions, tmp)
            bare_rate = await bare_throughput(anvil.http_url, args.transactions)
            print(f"throughput over {args.transactions} value transfers (anvil automine)")
            print(f"  transaction sender  : {sender_rate:7.1f} tx/s mined")
            print(f"  bare send_raw loop  : {bare_rate:7.1f} tx/s mined")
            print(f"  ratio sender / bare : {sender_rate / bare_rate:7.2f}")
    finally:
        anvil.stop()


if __name__ == "__main__":
    asyncio.run(main())
