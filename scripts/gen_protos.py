"""Regenerate the Python modules for src/pyserving/proto/*.proto (needs grpcio-tools).

Usage: python scripts/gen_protos.py   (or `make protos`)

The .proto files keep TF Serving's and KServe's package, message and field names and numbers, so
the generated code is wire-compatible with their clients. Generated files are committed; never
edit them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO_DIR = SRC / "pyserving" / "proto"
# Only these define services; the rest are plain messages.
SERVICES = {"grpc_service.proto", "prediction_service.proto", "model_service.proto"}


def main() -> int:
    """Run protoc over every .proto file; return its exit status."""
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    for stale in PROTO_DIR.glob("*_pb2*.py*"):
        stale.unlink()
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        args = [
            "protoc",
            f"-I{SRC}",
            f"-I{well_known}",
            f"--python_out={SRC}",
            f"--pyi_out={SRC}",
        ]
        if proto.name in SERVICES:
            args.append(f"--grpc_python_out={SRC}")
        args.append(str(proto.relative_to(SRC)))
        status = protoc.main(args)
        if status != 0:
            print(f"protoc failed on {proto.name}", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
