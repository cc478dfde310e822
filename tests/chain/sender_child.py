"""A sender in its own process, killed by the restart test while its transactions are in flight.

Usage: python -m tests.chain.sender_child <state.db> <http_url> <key_index> <count> <ready_file>
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from supervisor.chain.keys import Signer
from supervisor.chain.rpc import connect_http
from supervisor.chain.sender import SenderSettings, TransactionSender
from supervisor.store import OutboxState, Store
from tests.fixtures.contracts import anvil_account

SINK = "0x000000000000000000000000000000000000dEaD"


async def main(db: str, url: str, key_index: int, count: int, ready_file: str) -> None:
    store = Store.open(db)
    sender = TransactionSender(
        connect_http(url),
        Signer(anvil_account(key_index)),
        store,
        SenderSettings(poll_interval_s=0.1, receipt_deadline_s=3600),
    )
    await sender.start()
    ids = [sender.submit(SINK, value=1000 + i, kind="transfer") for i in range(count)]
    while True:
        actions = [store.get_action(i) for i in ids]
        if all(a is not None and a.state == OutboxState.SENT for a in actions):
            attempts = [store.attempts(i)[-1] for i in ids]
            if all(a.broadcast_at is not None for a in attempts):
                break
        await asyncio.sleep(0.05)
    Path(ready_file).write_text(json.dumps({str(i): store.attempts(i)[-1].tx_hash for i in ids}))
    await asyncio.Event().wait()


if __name__ == "__main__":
    db, url, key_index, count, ready = sys.argv[1:6]
    asyncio.run(main(db, url, int(key_index), int(count), ready))
