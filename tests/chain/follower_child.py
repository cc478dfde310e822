"""A follower in its own process, killed with SIGKILL by the resume test.

Usage: python -m tests.chain.follower_child <state.db> <http_url> <probe_address>
"""

from __future__ import annotations

import asyncio
import sys

from supervisor.chain.follower import EventSource, FollowerSettings, LogFollower
from supervisor.chain.rpc import connect_http
from supervisor.store import Store
from tests.chain.probe_handler import TickRecorder
from tests.fixtures.chain_layer import probe_artifact


async def main(db: str, url: str, probe: str) -> None:
    store = Store.open(db)
    events = [e for e in probe_artifact()["abi"] if e["type"] == "event"]
    follower = LogFollower(
        connect_http(url),
        store,
        [EventSource(probe, events)],
        TickRecorder(store),
        FollowerSettings(poll_interval_s=0.05, max_range=3),
    )
    await follower.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
