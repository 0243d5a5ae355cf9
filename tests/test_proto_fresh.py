"""The committed generated code must match what protoc makes from the committed .proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from hashmatch.server import protogen


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    fresh = {p.name: p.read_bytes() for p in protogen.generate(tmp_path)}
    committed = {
        p.name: p.read_bytes()
        for p in protogen.PACKAGE_DIR.iterdir()
        if p.name.endswith(protogen.GENERATED_SUFFIXES)
    }
    assert fresh, "protoc produced nothing"
    assert set(fresh) == set(committed), "generated file set differs: run `make proto`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated code {stale}: run `make proto` and commit"


def test_every_proto_has_generated_modules() -> None:
    for proto in protogen.proto_files():
        stem = proto.stem
        assert (protogen.PACKAGE_DIR / f"{stem}_pb2.py").is_file()
        assert (protogen.PACKAGE_DIR / f"{stem}_pb2_grpc.py").is_file()
