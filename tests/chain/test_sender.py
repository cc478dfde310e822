"""The transaction sender against a real anvil: pipelined nonces, drops, stuck fees, crash and restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from eth_typing import HexStr
from structlog.testing import capture_logs
from web3 import Web3

from grid_dev.anvil import REPO_ROOT, Anvil
from supervisor.chain.keys import Signer
from supervisor.chain.rpc import ChainIdMismatchError, connect_http
from supervisor.chain.sender import FeeBid, SenderSettings, TransactionSender, bump_fees
from supervisor.store import OutboxState, Store
from tests.fixtures.chain_layer import AnvilFactory, TcpProxy, deploy_probe, eventually
from tests.fixtures.contracts import anvil_account

SINK = Web3.to_checksum_address("0x000000000000000000000000000000000000dEaD")
FAST = SenderSettings(poll_interval_s=0.05, receipt_deadline_s=0.5)

SenderFactory = Callable[..., TransactionSender]


@pytest.fixture
async def make_sender(tmp_path: Path) -> AsyncIterator[SenderFactory]:
    """Builds started-later senders over one state file per test; stops them at the end."""
    made: list[tuple[TransactionSender, Store]] = []

    def make(anvil: Anvil, *, key_index: int = 3, settings: SenderSettings = FAST) -> TransactionSender:
        store = Store.open(tmp_path / "state.db")
        sender = TransactionSender(
            connect_http(anvil.http_url), Signer(anvil_account(key_index)), store, settings
        )
        made.append((sender, store))
        return sender

    yield make
    for sender, store in made:
        await sender.stop()
        await sender._w3.provider.disconnect()
        store.close()


def sync_w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.http_url))


def test_fee_bump_is_at_least_the_factor_and_the_market() -> None:
    old = FeeBid(max_fee_per_gas=100, max_priority_fee_per_gas=10)
    assert bump_fees(old, FeeBid(max_fee_per_gas=50, max_priority_fee_per_gas=1), 1.25, None) == FeeBid(
        max_fee_per_gas=125, max_priority_fee_per_gas=13
    )
    assert bump_fees(old, FeeBid(max_fee_per_gas=900, max_priority_fee_per_gas=20), 1.25, None) == FeeBid(
        max_fee_per_gas=900, max_priority_fee_per_gas=20
    )
    assert bump_fees(old, FeeBid(max_fee_per_gas=900, max_priority_fee_per_gas=20), 1.25, 300) == FeeBid(
        max_fee_per_gas=300, max_priority_fee_per_gas=20
    )
    assert bump_fees(FeeBid(gas_price=1), FeeBid(gas_price=1), 1.1, None) == FeeBid(gas_price=2)


async def test_200_concurrent_transactions_get_contiguous_nonces(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    sender = make_sender(own_anvil)
    await sender.start()
    w3 = sync_w3(own_anvil)
    first_nonce = w3.eth.get_transaction_count(sender.address)
    sink_before = w3.eth.get_balance(SINK)

    async def one(i: int) -> object:
        await asyncio.sleep(0)  # let the tasks interleave
        return await sender.send(SINK, value=i + 1, kind="transfer")

    outcomes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 120)

    assert all(o.success and o.error is None for o in outcomes)  # type: ignore[attr-defined]
    nonces = sorted(w3.eth.get_transaction(o.tx_hash)["nonce"] for o in outcomes)  # type: ignore[attr-defined]
    assert nonces == list(range(first_nonce, first_nonce + 200))
    assert w3.eth.get_transaction_count(sender.address) == first_nonce + 200
    assert w3.eth.get_balance(SINK) - sink_before == sum(range(1, 201))


async def test_dropped_transaction_is_resent_with_the_same_bytes(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    own_anvil.rpc("evm_setAutomine", [False])
    sender = make_sender(own_anvil)
    await sender.start()
    store = sender._store
    action_id = sender.submit(SINK, value=5, kind="transfer")
    attempt = await eventually(
        lambda: (a := store.attempts(action_id)) and a[-1].broadcast_at is not None and a[-1],
        what="broadcast",
    )
    assert own_anvil.rpc("eth_getTransactionByHash", [attempt.tx_hash]) is not None
    own_anvil.rpc("anvil_dropTransaction", [attempt.tx_hash])
    assert own_anvil.rpc("eth_getTransactionByHash", [attempt.tx_hash]) is None

    await eventually(
        lambda: own_anvil.rpc("eth_getTransactionByHash", [attempt.tx_hash]) is not None,
        what="the dropped transaction back in the pool",
    )
    own_anvil.rpc("evm_mine")
    outcome = await sender.wait(action_id, 30)
    assert outcome.success and outcome.tx_hash == attempt.tx_hash
    assert len(store.attempts(action_id)) == 1  # resent, not re-signed


async def test_stuck_transaction_is_replaced_with_a_higher_fee(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    own_anvil.rpc("evm_setAutomine", [False])
    sender = make_sender(own_anvil)
    await sender.start()
    store = sender._store
    action_id = sender.submit(SINK, value=7, kind="transfer")
    first = await eventually(
        lambda: (a := store.attempts(action_id)) and a[-1].broadcast_at is not None and a[-1],
        what="broadcast",
    )
    assert first.max_fee_per_gas is not None
    # The next block's base fee is far above the bid: the transaction stays in the pool, unmined.
    own_anvil.rpc("anvil_setNextBlockBaseFeePerGas", [hex(first.max_fee_per_gas * 10)])
    own_anvil.rpc("evm_mine")
    assert own_anvil.rpc("eth_getTransactionReceipt", [first.tx_hash]) is None

    replaced = await eventually(lambda: len(store.attempts(action_id)) >= 2, what="a replacement")
    assert replaced
    second = store.attempts(action_id)[-1]
    assert second.nonce == first.nonce and second.tx_hash != first.tx_hash
    assert second.max_fee_per_gas is not None and second.max_fee_per_gas > first.max_fee_per_gas
    assert second.max_priority_fee_per_gas is not None and first.max_priority_fee_per_gas is not None
    assert second.max_priority_fee_per_gas > first.max_priority_fee_per_gas
    own_anvil.rpc("evm_setAutomine", [True])
    own_anvil.rpc("evm_mine")
    outcome = await sender.wait(action_id, 30)
    assert outcome.success
    assert outcome.tx_hash in {a.tx_hash for a in store.attempts(action_id)}
    assert sync_w3(own_anvil).eth.get_transaction_count(sender.address) == first.nonce + 1


async def test_killed_sender_resends_exactly_the_unmined_transactions(
    own_anvil: Anvil, make_sender: SenderFactory, tmp_path: Path
) -> None:
    own_anvil.rpc("evm_setAutomine", [False])
    w3 = sync_w3(own_anvil)
    key_index = 3
    address = anvil_account(key_index).address
    first_nonce = w3.eth.get_transaction_count(address)
    sink_before = w3.eth.get_balance(SINK)
    ready = tmp_path / "ready.json"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.chain.sender_child",
            str(tmp_path / "state.db"),
            own_anvil.http_url,
            str(key_index),
            "10",
            str(ready),
        ],
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    try:
        await eventually(
            lambda: ready.exists() and ready.stat().st_size > 0, timeout_s=60, what="child ready"
        )
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    sent = {int(k): v for k, v in json.loads(ready.read_text()).items()}
    ids = sorted(sent)
    # Six of them get mined; the node forgets the last four (as a restarted node would).
    for action_id in ids[6:]:
        own_anvil.rpc("anvil_dropTransaction", [sent[action_id]])
    own_anvil.rpc("evm_mine")
    assert w3.eth.get_transaction_count(address) == first_nonce + 6
    own_anvil.rpc("evm_setAutomine", [True])

    sender = make_sender(own_anvil, key_index=key_index)
    await sender.start()
    outcomes = await asyncio.wait_for(asyncio.gather(*(sender.wait(i) for i in ids)), 60)

    assert all(o.success for o in outcomes)
    assert [o.tx_hash for o in outcomes] == [sent[i] for i in ids]  # the saved bytes, not new ones
    assert all(len(sender._store.attempts(i)) == 1 for i in ids)
    assert w3.eth.get_transaction_count(address) == first_nonce + 10
    assert w3.eth.get_balance(SINK) - sink_before == sum(1000 + i for i in range(10))  # nothing twice


async def test_nonce_taken_by_another_transaction_is_recovered_silently(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    sender = make_sender(own_anvil)
    await sender.start()  # its local nonce is now 0
    # Another program signs with the same key and takes nonce 0.
    account = anvil_account(3)
    w3 = sync_w3(own_anvil)
    foreign = account.sign_transaction(
        {"chainId": 31337, "nonce": 0, "to": SINK, "value": 1, "gas": 21000, "gasPrice": w3.eth.gas_price * 2}
    )
    w3.eth.send_raw_transaction(foreign.raw_transaction)
    outcome = await asyncio.wait_for(sender.send(SINK, value=2, kind="transfer"), 30)
    assert outcome.success and outcome.error is None
    assert w3.eth.get_transaction(HexStr(outcome.tx_hash or ""))["nonce"] == 1
    assert w3.eth.get_transaction_count(account.address) == 2


async def test_queued_actions_survive_a_restart_and_are_sent_once(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    first = make_sender(own_anvil)
    ids = [first.submit(SINK, value=1, kind="transfer", dedup_key=f"pay-{i}") for i in range(3)]
    # Never started: the actions are only in the outbox. A new sender over the same file sends them.
    second = make_sender(own_anvil)
    assert second.submit(SINK, value=1, kind="transfer", dedup_key="pay-0") == ids[0]
    await second.start()
    outcomes = await asyncio.wait_for(asyncio.gather(*(second.wait(i) for i in ids)), 30)
    assert all(o.success for o in outcomes)
    assert sync_w3(own_anvil).eth.get_transaction_count(second.address) == 3


async def test_reverting_call_is_not_sent_and_its_error_is_decoded(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    probe = deploy_probe(own_anvil)
    sender = make_sender(own_anvil)
    await sender.start()
    data = bytes.fromhex(probe.encode_abi("fail", args=[12])[2:])
    outcome = await asyncio.wait_for(sender.send(probe.address, data), 30)
    assert outcome.state == OutboxState.FAILED
    assert outcome.error == "InvalidTransition(from=2, to=5)"
    assert not outcome.delivered
    done = await asyncio.wait_for(
        sender.send(probe.address, bytes.fromhex(probe.encode_abi("fail", args=[25])[2:])), 30
    )
    assert done.error == "SameStatusError()" and done.already_done and done.delivered
    assert sync_w3(own_anvil).eth.get_transaction_count(sender.address) == 0


async def test_serial_actions_wait_for_the_previous_one(own_anvil: Anvil, make_sender: SenderFactory) -> None:
    sender = make_sender(own_anvil)
    await sender.start()
    ids = [sender.submit(SINK, value=i + 1, kind="transfer", serial_key="job-1") for i in range(3)]
    outcomes = await asyncio.wait_for(asyncio.gather(*(sender.wait(i) for i in ids)), 30)
    blocks = [o.block_number or 0 for o in outcomes]
    assert all(o.success for o in outcomes)
    assert blocks == sorted(blocks) and len(set(blocks)) == 3


async def test_legacy_fees_on_a_chain_without_eip1559(
    anvil_factory: AnvilFactory, make_sender: SenderFactory
) -> None:
    node = anvil_factory.start("--hardfork", "berlin")
    sender = make_sender(node)
    await sender.start()
    outcome = await asyncio.wait_for(sender.send(SINK, value=3, kind="transfer"), 30)
    assert outcome.success
    assert outcome.tx_hash is not None
    tx = sync_w3(node).eth.get_transaction(HexStr(outcome.tx_hash))
    assert tx["type"] == 0 and tx["gasPrice"] > 0


async def test_wrong_chain_id_is_refused_with_a_clear_error(
    own_anvil: Anvil, make_sender: SenderFactory
) -> None:
    sender = make_sender(own_anvil, settings=SenderSettings(chain_id=1))
    with pytest.raises(ChainIdMismatchError, match="chain id 31337, but chain id 1 is configured"):
        await sender.start()


async def test_garbage_and_silent_rpc_delay_the_outbox_without_losing_or_doubling(
    own_anvil: Anvil, proxy_factory: Callable[[int], TcpProxy], tmp_path: Path
) -> None:
    proxy = proxy_factory(own_anvil.port)
    store = Store.open(tmp_path / "state.db")
    w3 = connect_http(proxy.http_url, timeout_s=1.0)
    sender = TransactionSender(w3, Signer(anvil_account(3)), store, FAST)
    await sender.start()
    ids: list[int] = []
    try:
        with capture_logs() as logs:
            for mode in ("garbage", "hang"):
                proxy.set_mode(mode)
                ids.append(sender.submit(SINK, value=len(ids) + 1, kind="transfer"))
                await eventually(lambda: sender.last_error is not None, what=f"a failure seen in {mode} mode")
                assert store.get_action(ids[-1]).state == OutboxState.QUEUED  # type: ignore[union-attr]
                sender.last_error = None
            proxy.set_mode("pass")
            outcomes = await asyncio.wait_for(asyncio.gather(*(sender.wait(i) for i in ids)), 60)
        assert all(o.success for o in outcomes)
        assert any(e["log_level"] in ("warning", "error") for e in logs)
        assert sync_w3(own_anvil).eth.get_transaction_count(sender.address) == len(ids)
    finally:
        await sender.stop()
        await w3.provider.disconnect()
        store.close()


async def test_a_transaction_the_node_refuses_for_good_does_not_block_the_nonces_behind_it(
    anvil_factory: AnvilFactory, make_sender: SenderFactory
) -> None:
    """Gas above the block limit: the node refuses the bytes at every broadcast. The sender gives the
    action up with the node's reason and fills its nonce with a transfer to itself."""
    node = anvil_factory.start("--gas-limit", "60000")
    sender = make_sender(
        node, settings=SenderSettings(poll_interval_s=0.05, receipt_deadline_s=0.5, gas_margin=3.0)
    )
    await sender.start()
    w3 = sync_w3(node)
    first_nonce = w3.eth.get_transaction_count(sender.address)
    # A plain transfer's 21,000 gas x 3 exceeds the 60,000 block limit; the next one is sent normally.
    doomed = sender.submit(SINK, value=1, kind="transfer")
    outcome = await asyncio.wait_for(sender.wait(doomed), 30)
    assert outcome.state == OutboxState.FAILED and not outcome.delivered
    assert outcome.error is not None and "refuses" in outcome.error
    assert sender.abandoned == 1
    await eventually(lambda: w3.eth.get_transaction_count(sender.address) == first_nonce + 1)
    await sender.stop()
    # The same state file, now with a margin the block takes: the next nonce is free to use.
    sender = make_sender(node)
    await sender.start()
    sink_before = w3.eth.get_balance(SINK)
    after = await asyncio.wait_for(sender.send(SINK, value=7, kind="transfer"), 30)
    assert after.success
    assert w3.eth.get_balance(SINK) - sink_before == 7
    assert w3.eth.get_transaction_count(sender.address) == first_nonce + 2
    filler = w3.eth.get_transaction_by_block(w3.eth.block_number - 1, 0)
    assert (filler["from"], filler["to"], filler["value"], filler["nonce"]) == (
        sender.address,
        sender.address,
        0,
        first_nonce,
    )
