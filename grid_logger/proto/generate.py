"""Generate the Python modules of log.proto with the pinned grpcio-tools (dev extra)."""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
PROTO_FILE = PROTO_DIR / "log.proto"
GENERATED = ("log_pb2.py", "log_pb2.pyi", "log_pb2_grpc.py")
# protoc's output has no full type hints; the project type-checks strictly, so these files opt out.
TYPE_CHECK_OPT_OUT = "# mypy: ignore-errors\n"


def generate(out_dir: Path) -> None:
    """Write the generated modules under out_dir, laid out as from the repository root."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    relative = PROTO_FILE.relative_to(REPO_ROOT)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(relative),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    for name in ("log_pb2.pyi", "log_pb2_grpc.py"):
        path = out_dir / relative.parent / name
        path.write_text(TYPE_CHECK_OPT_OUT + path.read_text())


def main() -> None:
    generate(REPO_ROOT)
    print("generated:", ", ".join(str(PROTO_DIR / name) for name in GENERATED), file=sys.stderr)


if __name__ == "__main__":
    main()
