"""The committed generated code must match what protoc makes from the committed .proto.

Two checks: the schema itself (each committed module's serialized descriptor equals
the one protoc compiles now; fails whenever a .proto changed without `make proto`),
and byte equality of every generated file but grpcio-tools' version stamp (skipped only
if another version words the boilerplate differently; the stubs' RPCs are compared
even then).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from hashmatch.server import protogen

pytest.importorskip("grpc_tools")


def _generated_with(text: str) -> str | None:
    found = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("protogen")
    return {p.name: p.read_bytes() for p in protogen.generate(out)}


def _committed() -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in protogen.PACKAGE_DIR.iterdir()
        if p.name.endswith(protogen.GENERATED_SUFFIXES)
    }


def test_committed_schema_matches_the_proto_files(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{protogen.PROTO_ROOT}", f"--descriptor_set_out={out}",
                        *(str(p.relative_to(protogen.PROTO_ROOT)) for p in protogen.proto_files())
                        ]) == 0  # fmt: skip
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert compiled.file, "protoc compiled nothing"
    for file in compiled.file:
        module = importlib.import_module("hashmatch.v1." + Path(file.name).stem + "_pb2")
        committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        _drop_json_names(file)  # protoc fills them in descriptor sets, not in gencode
        _drop_json_names(committed)
        assert committed == file, f"{file.name} changed: run `make proto` and commit"


def _drop_json_names(file) -> None:
    def walk(messages) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            walk(message.nested_type)

    walk(file.message_type)


def test_generated_files_are_fresh(fresh: dict[str, bytes]) -> None:
    committed = _committed()
    assert fresh, "protoc produced nothing"
    assert set(fresh) == set(committed), "generated file set differs: run `make proto`"
    grpc_files = [n for n in fresh if n.endswith("_pb2_grpc.py")]
    ours = _generated_with(fresh[grpc_files[0]].decode())
    theirs = _generated_with(committed[grpc_files[0]].decode())
    for name in grpc_files:  # the stubs' RPCs, whatever version wrote them
        assert _rpc_paths(fresh[name]) == _rpc_paths(committed[name]), (
            f"{name} is stale: run `make proto` and commit"
        )
    # A newer grpcio-tools (any fresh install: CI's) stamps its version and, so far,
    # changes nothing else: compare without the stamp rather than skip every run.
    stale = sorted(name for name in fresh if _unstamped(fresh[name]) != _unstamped(committed[name]))
    if stale and ours != theirs:
        pytest.skip(f"grpcio-tools {ours} here words {stale} otherwise than {theirs} did")
    assert not stale, f"stale generated code {stale}: run `make proto` and commit"


def _unstamped(code: bytes) -> bytes:
    return re.sub(rb"GRPC_GENERATED_VERSION = '[^']+'", b"GRPC_GENERATED_VERSION = ''", code)


def _rpc_paths(code: bytes) -> set[bytes]:
    return set(re.findall(rb"'/hashmatch\.v1\.\w+/\w+'", code))


def test_every_proto_has_generated_modules() -> None:
    for proto in protogen.proto_files():
        assert (protogen.PACKAGE_DIR / f"{proto.stem}_pb2.py").is_file()
        assert (protogen.PACKAGE_DIR / f"{proto.stem}_pb2_grpc.py").is_file()
