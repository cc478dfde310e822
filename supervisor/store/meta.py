"""The `meta` table: facts about the file itself, chiefly which deployment it belongs to.

A state file is bound to one chain and one MetaScheduler the first time the daemon starts on it;
job ids repeat across deployments, so a file of another deployment is refused rather than acted on.
"""

from __future__ import annotations

from supervisor.store.base import StoreBase, StoreError


class MetaStore(StoreBase):
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def bind_chain_id(self, chain_id: int) -> None:
        """Tie the state file to one chain; a file made for another chain is refused."""
        known = self.get_meta("chain_id")
        if known is None:
            self.set_meta("chain_id", str(chain_id))
        elif int(known) != chain_id:
            raise StoreError(
                f"state file {self.path} belongs to chain id {known}, but the RPC serves chain id {chain_id}"
            )

    def bind_deployment(self, chain_id: int, meta_scheduler: str) -> None:
        """Tie the state file to one deployment: a chain and its MetaScheduler.

        Jobs of another deployment mean nothing here (their ids repeat across deployments), so a file
        made for another one is refused rather than acted on. Both bindings are one transaction: a
        refused file is left as it was, and a file is never bound to a chain but not to its contract.
        """
        with self.transaction():
            self.bind_chain_id(chain_id)
            known = self.get_meta("meta_scheduler")
            if known is None:
                self.set_meta("meta_scheduler", meta_scheduler)
            elif known.lower() != meta_scheduler.lower():
                raise StoreError(
                    f"state file {self.path} belongs to the MetaScheduler {known} on chain id {chain_id}, "
                    f"not to {meta_scheduler}: point store.path at a new file for this deployment"
                )
