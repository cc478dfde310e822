"""The SQLite script store: content keys, TTL, durability across reopening."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sbatch_service.storage import ScriptStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_key_is_the_sha256_of_the_script_and_reopening_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "db" / "scripts.sqlite3"
    store = ScriptStore(path)
    script = "#!/bin/bash\ntrue\necho 'é'\n"
    key = store.put(script, ttl_seconds=60)
    assert key == hashlib.sha256(script.encode()).hexdigest()
    store.close()
    reopened = ScriptStore(path)
    assert reopened.get(key) == script
    assert reopened.get("0" * 64) is None
    reopened.close()


def test_scripts_expire_and_extend_only_while_alive(tmp_path: Path) -> None:
    clock = Clock()
    store = ScriptStore(tmp_path / "s.sqlite3", clock=clock)
    key = store.put("a", ttl_seconds=10)
    clock.now += 9
    assert store.get(key) == "a"
    store.extend([key], 100)
    clock.now += 50
    assert store.get(key) == "a"
    clock.now += 51
    assert store.get(key) is None
    store.extend([key], 1000)
    assert store.get(key) is None, "an expired script is not brought back"
    assert store.purge_expired() == 1
    store.close()


def test_storing_again_never_shortens_the_life(tmp_path: Path) -> None:
    clock = Clock()
    store = ScriptStore(tmp_path / "s.sqlite3", clock=clock)
    key = store.put("a", ttl_seconds=100)
    assert store.put("a", ttl_seconds=1) == key
    clock.now += 50
    assert store.get(key) == "a"
    store.close()
