"""The log follower against a real anvil: exactly once and in order through WebSocket cuts, node restarts,
SIGKILL, reorganisations and bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs
from web3 import Web3
from web3.contract import Contract

from grid_dev.anvil import REPO_ROOT, Anvil
from supervisor.chain.follower import EventSource, FollowerSettings, LogFollower
from supervisor.chain.rpc import connect_http
from supervisor.store import Store
from tests.chain.probe_handler import TickRecorder, recorded
from tests.fixtures.chain_layer import AnvilFactory, TcpProxy, deploy_probe, eventually, probe_artifact
from tests.fixtures.contracts import anvil_account

TAG = b"t".ljust(32, b"\0")
SENDER = anvil_account(1).address


def probe_events() -> list[dict[str, Any]]:
    return [e for e in probe_artifact()["abi"] if e["type"] == "event"]


def emit(anvil: Anvil, probe: Contract, first: int, count: int) -> None:
    """One transaction emitting Tick(first) .. Tick(first + count - 1), waited for."""
    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    tx = probe.functions.tick(first, count, TAG).transact({"from": SENDER})
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)


@asynccontextmanager
async def following(
    store: Store, url: str, probe: Contract, settings: FollowerSettings, ws_url: str | None = None
) -> AsyncIterator[tuple[LogFollower, TickRecorder]]:
    handler = TickRecorder(store)
    w3 = connect_http(url, timeout_s=1.0)
    follower = LogFollower(
        w3, store, [EventSource(probe.address, probe_events())], handler, settings, ws_url=ws_url
    )
    task = asyncio.create_task(follower.run())
    try:
        yield follower, handler
        assert not task.done(), "the follower stopped on its own"
    finally:
        follower.stop()
        await asyncio.wait_for(task, 10)
        await w3.provider.disconnect()


async def test_500_events_exactly_once_through_ws_cuts_and_a_node_restart(
    anvil_factory: AnvilFactory, proxy_factory: Callable[[int], TcpProxy], tmp_path: Path
) -> None:
    state = tmp_path / "anvil-state.json"
    node = anvil_factory.start("--dump-state", str(state))
    port = node.port
    probe = deploy_probe(node)
    ws = proxy_factory(port)
    store = Store.open(tmp_path / "state.db")
    settings = FollowerSettings(poll_interval_s=1.0, max_range=7)
    async with following(store, node.http_url, probe, settings, ws_url=ws.ws_url) as (follower, handler):
        await eventually(lambda: follower.health.ws_connected, what="the websocket hint")
        for batch in range(50):
            await asyncio.to_thread(emit, node, probe, batch * 10, 10)
            if batch in (8, 17, 33, 41):
                await eventually(lambda: follower.health.ws_connected, what="the hint to reconnect")
                assert ws.cut() > 0
            if batch == 25:
                node.stop()  # anvil writes its state on exit
                node = anvil_factory.start("--load-state", str(state), "--dump-state", str(state), port=port)
        await eventually(lambda: len(recorded(store)) >= 500, timeout_s=60, what="500 events")
        await eventually(lambda: follower.health.ws_connected, what="the hint back")
        assert recorded(store) == list(range(500))
        assert handler.handled == list(range(500))
        assert handler.undone == []
        assert follower.health.ws_reconnects >= 4
    store.close()


async def test_sigkilled_follower_resumes_from_its_cursor(own_anvil: Anvil, tmp_path: Path) -> None:
    probe = deploy_probe(own_anvil)
    db = tmp_path / "state.db"
    Store.open(db).close()

    def count() -> int:
        conn = sqlite3.connect(db)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM tick").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            conn.close()

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.chain.follower_child", str(db), own_anvil.http_url, probe.address],
            cwd=REPO_ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def emit_batches(first: int, last: int) -> None:
        for batch in range(first, last):
            await asyncio.to_thread(emit, own_anvil, probe, batch * 10, 10)

    child = spawn()
    emitting = asyncio.create_task(emit_batches(0, 30))  # events keep coming while the child runs
    try:
        await eventually(lambda: count() >= 100, timeout_s=60, what="the child to handle 100 events")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    killed_at = count()
    await emitting
    assert killed_at < 300, "the kill must land mid-way for the test to mean something"
    await emit_batches(30, 40)
    child = spawn()
    try:
        await eventually(lambda: count() >= 400, timeout_s=60, what="all 400 events")
    finally:
        os.kill(child.pid, signal.SIGTERM)
        child.wait(10)
    store = Store.open(db)
    assert recorded(store) == list(range(400))
    store.close()


async def test_reorg_undoes_the_dropped_branch_and_handles_the_new_one(
    own_anvil: Anvil, tmp_path: Path
) -> None:
    probe = deploy_probe(own_anvil)
    store = Store.open(tmp_path / "state.db")
    async with following(store, own_anvil.http_url, probe, FollowerSettings(poll_interval_s=0.05)) as (
        follower,
        handler,
    ):
        await asyncio.to_thread(emit, own_anvil, probe, 0, 2)
        await eventually(lambda: recorded(store) == [0, 1], what="the common events")
        snapshot = own_anvil.rpc("evm_snapshot")
        await asyncio.to_thread(emit, own_anvil, probe, 100, 3)
        await eventually(lambda: recorded(store) == [0, 1, 100, 101, 102], what="the doomed branch")
        assert own_anvil.rpc("evm_revert", [snapshot]) is True
        own_anvil.rpc("anvil_mine", ["0x2"])  # the new branch is longer, with other blocks
        await asyncio.to_thread(emit, own_anvil, probe, 200, 2)
        await eventually(lambda: recorded(store) == [0, 1, 200, 201], what="the new branch")
        assert handler.undone == [102, 101, 100]  # newest first
        assert follower.health.reorgs >= 1
    store.close()


async def test_with_confirmations_a_dropped_branch_is_never_acted_on(
    own_anvil: Anvil, tmp_path: Path
) -> None:
    probe = deploy_probe(own_anvil)
    store = Store.open(tmp_path / "state.db")
    settings = FollowerSettings(poll_interval_s=0.05, confirmations=3)
    async with following(store, own_anvil.http_url, probe, settings) as (follower, handler):
        await asyncio.to_thread(emit, own_anvil, probe, 0, 1)
        own_anvil.rpc("anvil_mine", ["0x3"])
        await eventually(lambda: recorded(store) == [0], what="the confirmed event")
        snapshot = own_anvil.rpc("evm_snapshot")
        await asyncio.to_thread(emit, own_anvil, probe, 100, 2)
        own_anvil.rpc("anvil_mine", ["0x1"])  # not yet confirmed
        emitted_at = time.time()
        await eventually(
            lambda: (follower.health.last_read_at or 0) > emitted_at + 0.2, what="reads of the doomed branch"
        )
        assert own_anvil.rpc("evm_revert", [snapshot]) is True
        await asyncio.to_thread(emit, own_anvil, probe, 200, 1)
        own_anvil.rpc("anvil_mine", ["0x4"])
        await eventually(lambda: recorded(store) == [0, 200], what="the new branch, confirmed")
        assert 100 not in handler.handled and handler.undone == []
    store.close()


async def test_undecodable_log_is_logged_and_skipped(own_anvil: Anvil, tmp_path: Path) -> None:
    probe = deploy_probe(own_anvil)
    store = Store.open(tmp_path / "state.db")
    w3 = Web3(Web3.HTTPProvider(own_anvil.http_url))
    with capture_logs() as logs:
        async with following(store, own_anvil.http_url, probe, FollowerSettings(poll_interval_s=0.05)) as (
            follower,
            _,
        ):
            await asyncio.to_thread(emit, own_anvil, probe, 0, 2)
            tx = probe.functions.malformed(7).transact({"from": SENDER})
            await asyncio.to_thread(w3.eth.wait_for_transaction_receipt, tx)
            await asyncio.to_thread(emit, own_anvil, probe, 2, 2)
            await eventually(lambda: recorded(store) == [0, 1, 2, 3], what="the events around the bad log")
            assert follower.health.undecodable_logs == 1
    bad = [e for e in logs if e["event"] == "log does not decode, skipped"]
    assert len(bad) == 1 and "does not decode as Tick(uint256,bytes32)" in bad[0]["reason"]
    store.close()


def failure_count(logs: list[Any]) -> int:
    return sum(1 for e in logs if e["event"] == "reading the chain failed, will retry")


def more_failures(logs: list[Any], before: int) -> bool:
    return failure_count(logs) > before


async def test_garbage_and_silent_rpc_pause_reading_without_losing_the_cursor(
    own_anvil: Anvil, proxy_factory: Callable[[int], TcpProxy], tmp_path: Path
) -> None:
    probe = deploy_probe(own_anvil)
    proxy = proxy_factory(own_anvil.port)
    store = Store.open(tmp_path / "state.db")
    settings = FollowerSettings(poll_interval_s=0.05, error_backoff_max_s=0.5)
    with capture_logs() as logs:
        async with following(store, proxy.http_url, probe, settings) as (follower, handler):
            await asyncio.to_thread(emit, own_anvil, probe, 0, 2)
            await eventually(lambda: recorded(store) == [0, 1], what="first events")
            for mode in ("garbage", "hang"):
                cursor = store.get_cursor("main")
                failures = failure_count(logs)
                proxy.set_mode(mode)
                await eventually(
                    partial(more_failures, logs, failures), what=f"a logged failure in {mode} mode"
                )
                assert store.get_cursor("main") == cursor
                assert follower.health.last_error is not None
                proxy.set_mode("pass")
            await asyncio.to_thread(emit, own_anvil, probe, 2, 2)
            await eventually(lambda: recorded(store) == [0, 1, 2, 3], what="reading to resume")
            assert handler.handled == [0, 1, 2, 3]
    store.close()


async def test_wrong_chain_id_pauses_with_a_clear_log_line(own_anvil: Anvil, tmp_path: Path) -> None:
    probe = deploy_probe(own_anvil)
    store = Store.open(tmp_path / "state.db")
    await asyncio.to_thread(emit, own_anvil, probe, 0, 2)
    with capture_logs() as logs:
        async with following(
            store, own_anvil.http_url, probe, FollowerSettings(chain_id=1, poll_interval_s=0.05)
        ):
            await eventually(
                lambda: any(e["event"] == "wrong chain, following paused" for e in logs), what="the log line"
            )
    line = next(e for e in logs if e["event"] == "wrong chain, following paused")
    assert "the RPC serves chain id 31337, but chain id 1 is configured" in line["error"]
    assert store.get_cursor("main") is None and recorded(store) == []
    store.close()


async def test_dedup_records_are_kept_only_within_the_rollback_window(
    own_anvil: Anvil, tmp_path: Path
) -> None:
    probe = deploy_probe(own_anvil)
    store = Store.open(tmp_path / "state.db")
    settings = FollowerSettings(poll_interval_s=0.05, max_range=1, keep_checkpoints=3)
    async with following(store, own_anvil.http_url, probe, settings):
        for first in range(0, 12, 2):
            await asyncio.to_thread(emit, own_anvil, probe, first, 2)
        await eventually(lambda: len(recorded(store)) == 12, what="12 events")
        oldest = store.checkpoints("main")[-1].block_number
        kept = store.connection.execute("SELECT MIN(block_number), COUNT(*) FROM processed_event").fetchone()
        assert kept[0] >= oldest and kept[1] <= 2 * 3
    assert recorded(store) == list(range(12))
    store.close()


class FlakyTicks(TickRecorder):
    """Fails the ticks in `failing` until they are removed; ticks 30-39 share one ordering key."""

    def __init__(self, store: Store, failing: set[int]) -> None:
        super().__init__(store)
        self.failing = failing

    def order_key(self, event: Any) -> str | None:
        return "thirties" if 30 <= int(event.args["seq"]) < 40 else None

    def handle(self, event: Any, store: Store) -> None:
        if int(event.args["seq"]) in self.failing:
            raise RuntimeError(f"tick {event.args['seq']} cannot be recorded yet")
        super().handle(event, store)


async def test_an_event_whose_handler_fails_is_parked_and_handled_later_in_its_order(
    own_anvil: Anvil, tmp_path: Path
) -> None:
    probe = deploy_probe(own_anvil)
    store = Store.open(tmp_path / "state.db")
    handler = FlakyTicks(store, failing={31})
    w3 = connect_http(own_anvil.http_url, timeout_s=5.0)
    follower = LogFollower(
        w3, store, [EventSource(probe.address, probe_events())], handler, FollowerSettings()
    )
    try:
        await asyncio.to_thread(emit, own_anvil, probe, 29, 5)  # ticks 29..33 in one transaction
        with capture_logs() as logs:
            assert await follower.poll_once()
        # 31 failed: it waits, and so do 32 and 33 (same key); 29 and 30 went through, the cursor moved.
        assert recorded(store) == [29, 30]
        assert follower.health.parked_events == 3
        assert any(entry["event"].startswith("event handler failed: event parked") for entry in logs)
        assert store.get_cursor("main") is not None
        await asyncio.to_thread(emit, own_anvil, probe, 40, 1)  # another key: not held up
        assert await follower.poll_once()
        assert recorded(store) == [29, 30, 40]
        handler.failing.clear()

        async def retried() -> bool:
            await follower.poll_once()
            return recorded(store) == [29, 30, 40, 31, 32, 33]

        await eventually(retried, what="the parked ticks to be handled, in their order")
        assert follower.health.parked_events == 0
        assert store.parked_events("main") == []
    finally:
        await w3.provider.disconnect()
        store.close()
