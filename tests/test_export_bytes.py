"""`hashmatch lists export` writes the same bytes as before its read path was rewritten.

Why: partners diff and re-ingest what we send, and the docs promise the same list gives
the same bytes, so a faster export must not change one byte of any format. The digests
below are of the output the old export (one ``list_id = ? AND id > ? ORDER BY id LIMIT``
query a page, commit 8a85c3c) wrote for the list built here: labels in several
scripts, external ids with quotes, commas, line breaks, tabs and emoji, qualities,
expiries past and future, md5/sha256/vPDQ signals, retractions with reasons, and ids
not consecutive (a second list ingested in between), over more than one page. Every
format the CLI offers is checked, to a file, to stdout and gzipped.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli

LABELS = ("csam", "tier-1", "é", "日本", "a:b/c", "x.y", "partner_a")
ODD_LABELS = ("tier 1", "a;b", "c,d", 'q"t', "pipe|d")  # JSONL carries them, CSV refuses
EXTERNAL = (None, "e1", 'quo"te', "com,ma", "new\nline", "tab\there", "emoji 😀",
            "back\\slash", " lead", "ünï", "semi;colon")  # fmt: skip
PAST, FUTURE = 1_000_000_000.0, 4_000_000_000.0


def _hash(tag: str, i: int, nbytes: int = 32) -> str:
    return hashlib.sha256(f"{tag}{i}".encode()).hexdigest()[: 2 * nbytes]


def _record(tag: str, i: int, labels: tuple[str, ...]) -> SignalRecord:
    common = dict(
        labels=tuple(labels[(i + k) % len(labels)] for k in range(i % 4)),
        external_id=EXTERNAL[i % len(EXTERNAL)],
        quality=None if i % 5 == 0 else i % 101,
        expires_at=(None, PAST + i / 7, FUTURE - i * 0.1)[i % 3],
    )
    if i % 499 == 0:  # a video: frames with their qualities and times
        k = 1 + i % 3
        frames = np.frombuffer(bytes.fromhex(_hash(tag + "v", i) * k), np.uint8).reshape(k, 32)
        return SignalRecord("vpdq", "", frames=frames, frame_qualities=[50 + j for j in range(k)],
                            timestamps=[j / 3 for j in range(k)], **common)  # fmt: skip
    if i % 13 == 0:
        return SignalRecord("md5", _hash(tag, i, 16), **common)
    if i % 17 == 0:
        return SignalRecord("sha256", _hash(tag, i), **common)
    return SignalRecord("pdq", _hash(tag, i), **common)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """List 'shared' (23k signals, CSV-safe labels) ingested in batches between those of
    list 'odd' (labels only JSONL carries), then one in 97 of 'shared' retracted."""
    root = tmp_path_factory.mktemp("export-bytes")
    engine = Engine.open(root, eager=False)
    for batch in range(8):
        shared = range(batch * 2900, (batch + 1) * 2900)
        engine.ingest([_record("s", i, LABELS) for i in shared], list_name="shared")
        odd = range(batch * 40, (batch + 1) * 40)
        engine.ingest([_record("o", i, ODD_LABELS) for i in odd], list_name="odd")
    pdq = [i for i in range(1, 23_200, 97) if _record("s", i, LABELS).signal_type == "pdq"]
    gone = [("pdq", _hash("s", i)) for i in pdq]
    engine.store.retract(list_name="shared", hashes=gone[::2], reason="withdrawn, note é")
    engine.store.retract(list_name="shared", hashes=gone[1::2])
    engine.close()
    return root


#: sha256 of each export's bytes (gzip: of the bytes inside), as the old code wrote them.
EXPECTED = {
    ("odd", "stdout"): "30848e6890b2d2e069fa09bc17a2e8bf4b2df3e972e5145b9cc5f23a50461843",
    ("odd", "x.txt"): "b2544bfa09142774fa1cb801c6922313f38ae3c82a191617661300ad141971e1",
    ("shared", "--retracted"): "085bbd6e218b08003d623ba9e624a1b23d37ffad395118f0c7700d132b7966cb",
    (
        "shared",
        "--skip-expired",
    ): "7d4a00d0298eee19e8fc0beaad3762b6d3f4a463eea4d90eec9946a3120a5435",
    ("shared", "stdout"): "053986854e35eac087c4aa3a0e8ec435bc2ca3cabffc38354cb68eb08ea20ef8",
    ("shared", "x.csv"): "e904e5f9516446a3c46653044bb050453a74c1e4ef396e2ac413ef8014e32ad6",
    ("shared", "x.csv.gz"): "e904e5f9516446a3c46653044bb050453a74c1e4ef396e2ac413ef8014e32ad6",
    ("shared", "x.jsonl"): "053986854e35eac087c4aa3a0e8ec435bc2ca3cabffc38354cb68eb08ea20ef8",
    ("shared", "x.jsonl.gz"): "053986854e35eac087c4aa3a0e8ec435bc2ca3cabffc38354cb68eb08ea20ef8",
    ("shared", "x.txt"): "14e1459ca57798083ae348537ed0384e5f28c3f443a976f8ed49644374efcc33",
    ("shared", "x.txt.gz"): "14e1459ca57798083ae348537ed0384e5f28c3f443a976f8ed49644374efcc33",
}
EXPECTED_GZIP = {  # the .gz files themselves, as zlib GZIP_ZLIB packs them
    ("shared", "x.csv.gz"): "19c970d118686248cc85b304ba468f7b5f47d94769c77a1b98a853dd05dabaf0",
    ("shared", "x.jsonl.gz"): "2cba636895136ab84a5787ac16f7fb57492fdfd0e60fb858c6c2377850d2710f",
    ("shared", "x.txt.gz"): "766d1da7a5bd9d1e197ff32a3a72812d60d854aeabc313ea90ff7d55abc0e8cc",
}
GZIP_ZLIB = "1.2.13"


def _export(data_dir, tmp_path, list_name: str, how: str) -> bytes:
    args = ["lists", "export", list_name, "--data-dir", str(data_dir)]
    if how.startswith("--"):
        args.append(how)
    elif how != "stdout":
        args += ["--out", str(tmp_path / how)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if how.startswith("--") or how == "stdout":
        return result.stdout_bytes
    written = (tmp_path / how).read_bytes()
    if how.endswith(".gz"):  # the gzip itself: level 9, no name, no time, as before
        if zlib.ZLIB_RUNTIME_VERSION == GZIP_ZLIB:  # another zlib may pack differently
            assert hashlib.sha256(written).hexdigest() == EXPECTED_GZIP[list_name, how]
        return gzip.decompress(written)
    return written


@pytest.mark.parametrize(("list_name", "how"), sorted(EXPECTED))
def test_export_bytes_are_those_the_old_export_wrote(data_dir, tmp_path, list_name, how):
    got = hashlib.sha256(_export(data_dir, tmp_path, list_name, how)).hexdigest()
    assert got == EXPECTED[list_name, how], (
        "the export's bytes changed: partners diff and re-ingest them; check out 8a85c3c"
        " and compare its output for this list"
    )
