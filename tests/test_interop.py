"""Hash lists as other tools write them: python-threatexchange's own CLI (`threatexchange
dataset`, its `local_file` collaboration's `TYPE HASH` lines), its type names, HMA's and
ThreatExchange's names, gzip-compressed lists; and hashmatch's exports read back by
python-threatexchange's own readers. Hashes are generated, never taken from media."""

from __future__ import annotations

import csv
import gzip
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pytx_vpdq import threatexchange_vpdq

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.export import export_list
from hashmatch.engine.ingest import read_records
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

pytest.importorskip("threatexchange")

_RNG = random.Random(20261206)
PDQ = [f"{_RNG.getrandbits(256):064x}" for _ in range(20)]
MD5 = [f"{_RNG.getrandbits(128):032x}" for _ in range(3)]
SHA256 = [f"{_RNG.getrandbits(256):064x}" for _ in range(3)]
TX = Path(sys.executable).with_name("threatexchange")


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(tmp_path / "data", eager=False)
    yield e
    e.close()


def _ingest(engine, path, **kw):
    return engine.ingest(read_records(path, **kw), list_name="l", source=str(path))


def _stored(engine) -> set[tuple[str, str]]:
    return {(s.signal_type, s.hash_hex) for s in engine.store.iter_signals("l")}


def _signals_file(path: Path) -> Path:
    """What python-threatexchange's ``local_file`` collaboration reads: ``TYPE HASH`` a
    line (its own ``report_opinion`` writes them so), with a type hashmatch lacks."""
    lines = [f"pdq {h}" for h in PDQ] + [f"video_md5 {h}" for h in MD5]
    lines += [f"video_sha256 {h}" for h in SHA256] + ["url_md5 " + MD5[0], "raw_text a b c"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tx(root: Path, *args: str) -> bytes:
    """python-threatexchange's CLI, offline, its state under ``root``."""
    if not TX.exists():
        pytest.skip("threatexchange CLI not installed")
    env = {**os.environ, "HOME": str(root)}
    return subprocess.run([str(TX), *args], env=env, capture_output=True, timeout=120,
                          check=True).stdout  # fmt: skip


def _pytx_reads(root: Path, signals: Path, *outputs: tuple[str, ...]) -> list[bytes]:
    """pytx fetches ``signals`` through a ``local_file`` collaboration and prints each
    ``dataset`` output asked."""
    _tx(root, "config", "collab", "edit", "local_file", "--create", "--filename", str(signals),
        "gen")  # fmt: skip
    _tx(root, "fetch")
    return [_tx(root, "dataset", "-P", *args) for args in outputs]


@pytest.fixture(scope="module")
def pytx_dataset(tmp_path_factory) -> Path:
    """`threatexchange dataset -P --csv` and `-P -S` of a local_file collaboration of
    generated hashes, as python-threatexchange's CLI writes them (offline)."""
    root = tmp_path_factory.mktemp("pytx")
    signals = _signals_file(root / "signals.txt")
    csv_out, typed = _pytx_reads(root, signals, ("--csv",), ("-S",))
    (root / "dataset.csv").write_bytes(csv_out)
    (root / "dataset.txt").write_bytes(typed)
    return root


def _expected() -> set[tuple[str, str]]:
    return {("pdq", h) for h in PDQ} | {("md5", h) for h in MD5} | {("sha256", h) for h in SHA256}


def test_pytx_dataset_csv_ingests_whole(engine, pytx_dataset):
    """Its CSV names the hash column `signal_str` (CRLF rows, `collab`, `category`,
    `tags` beside it): every supported hash arrives, the others are named per line."""
    path = pytx_dataset / "dataset.csv"
    assert path.read_bytes().startswith(b"signal_type,signal_str,collab,category,tags\r\n")
    report = _ingest(engine, path)
    assert _stored(engine) == _expected()
    reasons = sorted(r.reason.split(" (")[0] for r in report.rejections)
    assert reasons == ["unknown signal type 'raw_text'", "unknown signal type 'url_md5'"]


def test_pytx_type_hash_lines_ingest_whole(engine, pytx_dataset):
    """`dataset -P -S` prints, and the local_file collaboration reads, `TYPE HASH` lines:
    the type comes from each line, no --type needed."""
    report = _ingest(engine, pytx_dataset / "dataset.txt")
    assert _stored(engine) == _expected()
    assert report.rejected == 2
    assert {r.reason.split(" (")[0] for r in report.rejections} == {
        "unknown signal type 'raw_text'", "unknown signal type 'url_md5'"}  # fmt: skip


@pytest.mark.parametrize(
    ("given", "stored"),
    [("video_sha256", "sha256"), ("HASH_PDQ", "pdq"), ("HASH_VIDEO_MD5", "md5"),
     ("HASH_MD5", "md5"), ("HASH_SHA256", "sha256"), ("ImagePDQ", "pdq"), ("VideoMD5", "md5")],
)  # fmt: skip
def test_other_tools_type_names(engine, tmp_path, given, stored):
    """pytx's `video_sha256`, ThreatExchange's indicator types, StopNCII's type names."""
    value = {"pdq": PDQ[0], "md5": MD5[0], "sha256": SHA256[0]}[stored]
    path = tmp_path / "t.csv"
    path.write_text(f"signal_type,signal_value\n{given},{value}\n")
    report = _ingest(engine, path)
    assert report.added == 1, report.rejections
    assert _stored(engine) == {(stored, value)}


def test_typed_lines_mixed_with_bare_ones_and_type(engine, tmp_path):
    """`TYPE:HASH` too (what `lists export --retracted` writes); --type is the type of the
    bare lines (`remote ingest` defaults it to pdq), a typed line keeps its own."""
    path = tmp_path / "h.txt"
    path.write_text(f"pdq:{PDQ[0]}\n{PDQ[1]}\nmd5 {MD5[0]}\nvideo_md5\t{MD5[1]}\n")
    report = _ingest(engine, path, signal_type="pdq")
    assert report.rejections == []
    assert _stored(engine) == {("pdq", PDQ[0]), ("pdq", PDQ[1]), ("md5", MD5[0]), ("md5", MD5[1])}
    path.write_text(f"sha256 {SHA256[0]}\n{PDQ[2]}\n")
    report = _ingest(engine, path)
    assert ("sha256", SHA256[0]) in _stored(engine)
    assert [(r.line, r.field) for r in report.rejections] == [(2, "signal_type")]
    path.write_text(f"{PDQ[2]}\n")
    with pytest.raises(InvalidInput, match="give the signal type"):
        _ingest(engine, path)
    path.write_text(f"# exported 2026-12-06\nsha256 {SHA256[1]}\n")  # a comment first
    assert _ingest(engine, path).rejections == []


def test_trailing_unnamed_header_columns_are_not_required(engine, tmp_path):
    """A spreadsheet's export may name empty trailing columns (`signal_type,signal_value,,`)
    that its shorter rows leave out: those rows lack nothing the header names."""
    path = tmp_path / "sheet.csv"
    path.write_text(f"signal_type,signal_value,,\r\npdq,{PDQ[0]}\r\npdq,{PDQ[1]},,\r\n")
    report = _ingest(engine, path)
    assert report.rejections == []
    assert _stored(engine) == {("pdq", PDQ[0]), ("pdq", PDQ[1])}


def test_gzip_lists_ingest_from_files_and_stdin(engine, tmp_path):
    """A `.csv.gz` (or any gzip, by its magic bytes) streams through: format from the
    suffix under `.gz`, BOM and CRLF as in a plain file; a damaged one is one error."""
    body = "\ufeffsignal_type,signal_value,tags\r\n" + "".join(
        f"pdq,{h.upper()},t{i}\r\n" for i, h in enumerate(PDQ)
    )
    path = tmp_path / "list.csv.gz"
    path.write_bytes(gzip.compress(body.encode()))
    report = _ingest(engine, path)
    assert report.added == len(PDQ) and report.rejections == []
    assert {s.hash_hex for s in engine.store.iter_signals("l")} == set(PDQ)
    typed = tmp_path / "signals"  # no suffix at all: gzip by its bytes, typed lines
    typed.write_bytes(gzip.compress(f"md5 {MD5[0]}\n".encode()))
    assert _ingest(engine, typed).added == 1
    raw = io.BytesIO(gzip.compress(f"{SHA256[0]}\n".encode()))
    assert _ingest(engine, raw, signal_type="sha256").added == 1
    assert not raw.closed
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InvalidInput, match=r"cut\.csv\.gz \(gzip\) is cut short or damaged"):
        _ingest(engine, cut)


def test_gzip_from_stdin_via_cli(tmp_path):
    """`zcat`-free: `hashmatch ingest - < list.csv.gz`."""
    env = {**os.environ, "HASHMATCH_DATA_DIR": str(tmp_path / "d")}
    body = "signal_type,signal_value\n" + "".join(f"pdq,{h}\n" for h in PDQ[:5])
    done = subprocess.run([sys.executable, "-m", "hashmatch.server.cli", "ingest", "-", "--list",
                           "l"], input=gzip.compress(body.encode()), env=env,
                          capture_output=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"added 5," in done.stdout


def _video(seed: int, n: int) -> SignalRecord:
    rng = np.random.default_rng(seed)
    return SignalRecord("vpdq", "", ("v",), external_id=f"video-{seed}",
                        frames=rng.integers(0, 256, (n, 32), dtype=np.uint8),
                        frame_qualities=[int(q) for q in rng.integers(50, 101, n)],
                        timestamps=[i * 0.5 for i in range(n)])  # fmt: skip


@pytest.fixture
def shared(engine):
    """A list as a platform shares it: PDQ with labels, ids and quality, file digests, a
    video, and one retracted hash."""
    records = [SignalRecord("pdq", h, ("csam", f"t{i % 3}"), f"id-{i}", 50 + i)
               for i, h in enumerate(PDQ)]  # fmt: skip
    records += [SignalRecord("md5", h, ("x",)) for h in MD5]
    records += [SignalRecord("sha256", h) for h in SHA256] + [_video(1, 4), _video(2, 3)]
    engine.ingest(records, list_name="l")
    engine.retract(list_name="l", hashes=[("pdq", PDQ[-1])], reason="false positive")
    return engine


def test_hex_export_is_what_pytx_local_file_reads(shared, tmp_path):
    """`lists export --format hex`: `TYPE HASH` lines in python-threatexchange's names;
    its own CLI fetches them through a local_file collaboration, hash for hash, and
    hashmatch ingests them back as the same hashes (videos' frames too)."""
    out = io.StringIO()
    report = export_list(shared.store, "l", out, format="hex")
    live = {(s.signal_type, s.hash_hex) for s in shared.store.iter_signals("l")}
    assert report.written == len(live) == len(PDQ) - 1 + 3 + 3 + 2
    path = tmp_path / "export.txt"
    path.write_text(out.getvalue())
    (printed,) = _pytx_reads(tmp_path / "home", path, ("-S",))
    names = {"md5": "video_md5", "sha256": "video_sha256"}
    assert set(printed.decode().splitlines()) == {
        f"{names.get(t, t)} {h}" for t, h in live if t != "vpdq"}  # fmt: skip
    assert f"pdq {PDQ[-1]}" not in out.getvalue()  # retracted: never exported
    copy = Engine.open(tmp_path / "copy", eager=False)
    try:
        back = copy.ingest(read_records(path), list_name="l")
        assert back.rejections == [] and _stored(copy) == live
        for video in ("video-1", "video-2"):
            (a,) = [s for s in shared.store.iter_signals("l") if s.external_id == video]
            (b,) = [s for s in copy.store.iter_signals("l") if s.hash_hex == a.hash_hex]
            codes, qualities, stamps = shared.store.frames(a.id)
            again = copy.store.frames(b.id)
            assert (codes.tobytes(), qualities, stamps) == (again[0].tobytes(), *again[1:])
    finally:
        copy.close()


def test_csv_export_read_by_pytx_signal_classes_and_index(shared, tmp_path):
    """Every CSV row's value is what python-threatexchange's signal classes accept as
    they are (lower-case hex; a video's frames parse with its json_to_vpdq), and its PDQ
    index over the exported hashes matches what hashmatch matches (distance <= 31)."""
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.pdq_index2 import PDQIndex2
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.sha256 import VideoSHA256Signal

    out = io.StringIO()
    export_list(shared.store, "l", out, format="csv")
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    classes = {"pdq": PdqSignal, "md5": VideoMD5Signal, "sha256": VideoSHA256Signal}
    pdq = []
    for row in rows:
        if row["signal_type"] == "vpdq":  # (its json_to_vpdq needs the vpdq package)
            continue
        cls = classes[row["signal_type"]]
        assert cls.validate_signal_str(row["signal_value"]) == row["signal_value"]
        if row["signal_type"] == "pdq":
            pdq.append((row["signal_value"], row["external_id"]))
    assert {r["labels"] for r in rows if r["signal_type"] == "pdq"} >= {"csam;t0", "csam;t1"}
    index = PDQIndex2.build(pdq)
    rng = random.Random(5)
    queries = []
    for h, _ in pdq:
        for k in (0, 30, 31, 32, 33):
            v = int(h, 16)
            for b in rng.sample(range(256), k):
                v ^= 1 << b
            queries.append(f"{v:064x}")
    codes = np.array([np.frombuffer(bytes.fromhex(q), np.uint8) for q in queries])
    ours = [sorted((m.external_id, m.distance) for m in found)
            for found in shared.match("pdq", codes, threshold=31)]  # fmt: skip
    theirs = [sorted((m.metadata, m.similarity_info.distance) for m in index.query(q))
              for q in queries]  # fmt: skip
    assert ours == theirs
    assert sum(map(len, ours)) >= 3 * len(pdq)  # 0, 30, 31 bits away all found


def test_csv_export_videos_parse_with_pytx_json_to_vpdq(shared):
    """A video's CSV value is python-threatexchange's serialized frame list: its parser
    gives back each stored frame's hash, quality and timestamp."""
    vpdq_util, _ = threatexchange_vpdq()

    out = io.StringIO()
    export_list(shared.store, "l", out, format="csv")
    videos = [r for r in csv.DictReader(io.StringIO(out.getvalue())) if r["signal_type"] == "vpdq"]
    assert len(videos) == 2
    for row in videos:
        (info,) = [s for s in shared.store.iter_signals("l") if s.external_id == row["external_id"]]
        codes, qualities, stamps = shared.store.frames(info.id)
        parsed = vpdq_util.json_to_vpdq(row["signal_value"])
        assert [(f.pdq_hex, f.quality, f.timestamp) for f in parsed] == [
            (bytes(c).hex(), q, t) for c, q, t in zip(codes, qualities, stamps, strict=True)
        ]


def test_threatexchange_simple_dumps_as_pytx_writes_them(engine, tmp_path):
    """python-threatexchange's own serializers: `CliIndicatorSerialization.store` writes
    `simple.<TYPE>.te` files (hash, descriptor id, added on, space-separated tags; no
    header) and `HMASerialization` rows add the indicator id. Type from the name, the id
    as external id, the tags as labels; a row of another width is named."""
    from threatexchange.cli.dataset.simple_serialization import (
        CliIndicatorSerialization,
        HMASerialization,
    )
    from threatexchange.exchanges.clients.fb_threatexchange.descriptor import (
        SimpleDescriptorRollup,
    )

    def rollup(i: int) -> SimpleDescriptorRollup:
        return SimpleDescriptorRollup(1000 + i, "2026-11-30T18:47:52+0000", {"media_type_photo"})

    items = [CliIndicatorSerialization("HASH_PDQ", h, rollup(i)) for i, h in enumerate(PDQ)]
    items += [CliIndicatorSerialization("HASH_VIDEO_MD5", h, rollup(50)) for h in MD5]
    paths = sorted(CliIndicatorSerialization.store(tmp_path, items))
    assert [p.name for p in paths] == ["simple.HASH_PDQ.te", "simple.HASH_VIDEO_MD5.te"]
    for path in paths:
        assert _ingest(engine, path).rejections == []
    got = {(s.signal_type, s.hash_hex): s for s in engine.store.iter_signals("l")}
    assert set(got) == {("pdq", h) for h in PDQ} | {("md5", h) for h in MD5}
    assert got["pdq", PDQ[3]].external_id == "1003"
    assert got["pdq", PDQ[3]].labels == ("media_type_photo",)

    hma = tmp_path / "video_md5.csv"  # HMA's sample_data names: type from the stem
    rows = [HMASerialization(h, "HASH_VIDEO_MD5", f"99{i}", rollup(i)).as_csv_row()
            for i, h in enumerate(MD5)]  # fmt: skip
    with hma.open("w", newline="") as f:
        csv.writer(f).writerows([*rows, ("x", "1")])
    report = _ingest(engine, hma)
    assert report.unchanged == 0 and report.updated == len(MD5)  # ids 99i replace 1050
    assert {s.external_id for s in engine.store.iter_signals("l") if s.signal_type == "md5"} == {
        "990", "991", "992"}  # fmt: skip
    assert [(r.line, r.field) for r in report.rejections] == [(4, "row")]
    unnamed = tmp_path / "holidays-hashes.csv"
    unnamed.write_text(f"{PDQ[0]},1,2020-07-31T18:47:52+0000,a b\n")
    with pytest.raises(InvalidInput, match="names its type in the file name"):
        _ingest(engine, unnamed)
    assert _ingest(engine, unnamed, signal_type="pdq").rejections == []


def test_a_column_per_hash_type(engine, tmp_path):
    """NCMEC/StopNCII-style lists: one row per media item, a column per hash type
    (`ID,MD5,SHA1,PDQ,...`). Each filled hash cell is a signal with the row's id and
    labels; a hash type no hasher here computes (SHA1) is rejected by line, not dropped
    silently; quality goes to the PDQ only."""
    path = tmp_path / "ncmec.csv"
    rows = [["ID", "MD5", "SHA1", "PDQ", "SHA256", "quality", "labels"]]
    rows += [[f"e{i}", MD5[i], "", PDQ[i], "", "90", "A1 csam"] for i in range(3)]
    rows += [["e3", "", "da39a3ee5e6b4b0d3255bfef95601890afd80709", PDQ[3], SHA256[0], "", ""]]
    rows += [["e4", "", "", "", "", "", ""], ["e5", MD5[0].upper(), "", "", "", "", ""]]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    report = _ingest(engine, path)
    got = {(s.signal_type, s.hash_hex): s for s in engine.store.iter_signals("l")}
    assert set(got) == {("md5", h) for h in MD5} | {("pdq", h) for h in PDQ[:4]} | {
        ("sha256", SHA256[0])}  # fmt: skip
    assert (got["pdq", PDQ[1]].external_id, got["pdq", PDQ[1]].quality) == ("e1", 90)
    assert (got["md5", MD5[1]].quality, got["md5", MD5[1]].labels) == (None, ("A1", "csam"))
    assert got["sha256", SHA256[0]].external_id == "e3"
    assert [(r.line, r.field) for r in report.rejections] == [(5, "sha1"), (6, "row"), (7, "hash")]
    assert "duplicate md5 hash" in report.rejections[2].reason


def test_hma_hash_mappings_as_jsonl(engine, tmp_path):
    """HMA's /h/hash answers (and /c/bank/<bank>/signal takes) `{TYPE: HASH, ...}`; saved
    one a line with HMA's bank metadata, each type is a signal with the line's
    content_id; a type no hasher here computes is named by line."""
    import json

    frames = json.dumps([f"{PDQ[5]},100,0.0", f"{PDQ[6]},90,1.0"])
    lines = [
        {"pdq": PDQ[0], "metadata": {"content_id": "c-1"}},
        {"video_md5": MD5[0], "vpdq": frames, "metadata": {"content_id": "c-2"}},
        {"pdq": PDQ[1], "tmk": "ab" * 10, "labels": ["x"]},
        {"note": "no hash"},
    ]
    path = tmp_path / "hma.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = _ingest(engine, path)
    got = {s.signal_type: s for s in engine.store.iter_signals("l") if s.external_id == "c-2"}
    assert set(got) == {"md5", "vpdq"} and got["md5"].hash_hex == MD5[0]
    codes, qualities, _ = engine.store.frames(got["vpdq"].id)
    assert [c.tobytes().hex() for c in codes] == [PDQ[5], PDQ[6]] and qualities == [100, 90]
    assert ("pdq", PDQ[0]) in _stored(engine) and ("pdq", PDQ[1]) in _stored(engine)
    assert [(r.line, r.field) for r in report.rejections] == [(3, "tmk"), (4, "signal_type")]


def test_a_retraction_reaches_pytx_by_re_export_and_fetch_clear(shared, tmp_path):
    """The hex export leaves retracted hashes out; pytx's local_file keeps what it once
    fetched, so a plain re-fetch keeps a withdrawn hash and `fetch --clear` drops it
    (the README's procedure)."""
    path, home = tmp_path / "l.txt", tmp_path / "home"
    path.write_text(_export(shared, "hex"))
    (before,) = _pytx_reads(home, path, ("-S",))
    assert f"pdq {PDQ[0]}".encode() in before
    shared.retract(list_name="l", hashes=[("pdq", PDQ[0])])
    path.write_text(_export(shared, "hex"))
    _tx(home, "fetch")
    assert f"pdq {PDQ[0]}".encode() in _tx(home, "dataset", "-P", "-S")
    _tx(home, "fetch", "--clear")
    _tx(home, "fetch")
    after = _tx(home, "dataset", "-P", "-S")
    assert f"pdq {PDQ[0]}".encode() not in after and f"pdq {PDQ[1]}".encode() in after


def _export(engine, fmt: str) -> str:
    out = io.StringIO()
    export_list(engine.store, "l", out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("sep", ["\t", ";"])
def test_tab_and_semicolon_separated_lists(engine, tmp_path, sep):
    """A TSV (spreadsheets, `cut`) or an Excel CSV of a comma-decimal locale (`;`): the
    header's separator, when it holds no comma, is the file's; both layouts."""
    path = tmp_path / ("list.tsv" if sep == "\t" else "list.csv")
    rows = [["signal_type", "signal_value", "tags", "content_id"]]
    rows += [["pdq", h, "a b", f"id {i}, x"] for i, h in enumerate(PDQ[:3])]
    with path.open("w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f, delimiter=sep).writerows(rows)
    report = _ingest(engine, path)
    assert report.rejections == []
    got = {s.hash_hex: s for s in engine.store.iter_signals("l")}
    assert set(got) == set(PDQ[:3]) and got[PDQ[1]].external_id == "id 1, x"
    assert got[PDQ[1]].labels == ("a", "b")
    wide = tmp_path / "wide.tsv"
    wide.write_text(sep.join(["ID", "MD5", "PDQ"]) + "\n" + sep.join(["e9", MD5[2], PDQ[9]]) + "\n")
    assert _ingest(engine, wide).rejections == []
    assert {("md5", MD5[2]), ("pdq", PDQ[9])} <= _stored(engine)
