"""Regenerate the committed Python code for ``proto/hashmatch/v1/*.proto``.

Why committed: users install hashmatch without grpcio-tools, and generic gRPC
clients read the .proto. ``tests/test_proto_fresh.py`` regenerates into a temp
dir and fails when the committed files differ, so the two never drift.

``python -m hashmatch.server.protogen`` (what ``make proto`` runs) rewrites them in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hashmatch.v1

PACKAGE_DIR = Path(hashmatch.v1.__file__).resolve().parent  # proto/hashmatch/v1
PROTO_ROOT = PACKAGE_DIR.parent.parent  # proto/: imports read "hashmatch/v1/x.proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def proto_files() -> list[Path]:
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every .proto into ``out_root/hashmatch/v1``; return the files written."""
    import importlib.resources

    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_root = Path(out_root)
    (out_root / "hashmatch" / "v1").mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    out_dir = out_root / "hashmatch" / "v1"
    return sorted(p for p in out_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> None:
    written = generate(PROTO_ROOT)
    for path in written:
        print(path.relative_to(PROTO_ROOT.parent))


if __name__ == "__main__":
    main()
    sys.exit(0)
