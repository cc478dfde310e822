"""Generate the Python modules of every .proto here with the pinned grpcio-tools (dev extra).

One generator for both APIs, so they are built with the same protoc options and checked by one test.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
PROTO_FILES = (PROTO_DIR / "sbatch.proto", PROTO_DIR / "log.proto")
GENERATED = tuple(
    f"{proto.stem}{suffix}" for proto in PROTO_FILES for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
)
# protoc's output has no full type hints; the project type-checks strictly, so these files opt out.
TYPE_CHECK_OPT_OUT = "# mypy: ignore-errors\n"


def generate(out_dir: Path) -> None:
    """Write the generated modules under out_dir, laid out as from the repository root."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    relative = [proto.relative_to(REPO_ROOT) for proto in PROTO_FILES]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *(str(path) for path in relative),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    for path in relative:
        for name in (f"{path.stem}_pb2.pyi", f"{path.stem}_pb2_grpc.py"):
            target = out_dir / path.parent / name
            target.write_text(TYPE_CHECK_OPT_OUT + target.read_text())


def main() -> None:
    generate(REPO_ROOT)
    print("generated:", ", ".join(str(PROTO_DIR / name) for name in GENERATED), file=sys.stderr)


if __name__ == "__main__":
    main()
