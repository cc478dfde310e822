"""A follower handler for tests: records each Tick in a table of the store, and undoes it on a reorg."""

from __future__ import annotations

from supervisor.chain.events import ChainEvent
from supervisor.store import Store


class TickRecorder:
    """Keeps `tick(seq, tx_hash, log_index, block_number)` rows; counts calls in memory too."""

    def __init__(self, store: Store) -> None:
        store.connection.execute(
            "CREATE TABLE IF NOT EXISTS tick (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, "
            "tx_hash TEXT NOT NULL, log_index INTEGER NOT NULL, block_number INTEGER NOT NULL)"
        )
        self.handled: list[int] = []
        self.undone: list[int] = []

    def handle(self, event: ChainEvent, store: Store) -> None:
        seq = int(event.args["seq"])
        store.connection.execute(
            "INSERT INTO tick (seq, tx_hash, log_index, block_number) VALUES (?, ?, ?, ?)",
            (seq, event.tx_hash, event.log_index, event.block_number),
        )
        self.handled.append(seq)

    def undo(self, event: ChainEvent, store: Store) -> None:
        store.connection.execute(
            "DELETE FROM tick WHERE tx_hash = ? AND log_index = ?", (event.tx_hash, event.log_index)
        )
        self.undone.append(int(event.args["seq"]))


def recorded(store: Store) -> list[int]:
    """The sequence numbers in the table, in the order they were handled."""
    return [int(r[0]) for r in store.connection.execute("SELECT seq FROM tick ORDER BY id").fetchall()]
