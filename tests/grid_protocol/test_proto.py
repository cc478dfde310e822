"""The committed gRPC modules are what the pinned grpcio-tools generates from the .proto files."""

from __future__ import annotations

from pathlib import Path

from grid_protocol.proto import generate


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    relative = generate.PROTO_DIR.relative_to(generate.REPO_ROOT)
    for name in generate.GENERATED:
        fresh = (tmp_path / relative / name).read_text()
        committed = (generate.PROTO_DIR / name).read_text()
        assert committed == fresh, f"{name} is stale: run .venv/bin/python -m grid_protocol.proto.generate"
