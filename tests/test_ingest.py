"""Ingest formats: round-trips of JSONL, CSV, hex and vPDQ, bad lines with precise
messages, strict refusal, auto-detection, streaming (batches commit before EOF)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.ingest import detect_format, read_records, write_records
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import IngestRefused

PDQ = [
    "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22",
    "1111111111111111111111111111111111111111111111111111111111111111",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
]
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(tmp_path / "data")
    yield e
    e.close()


def ingest_text(engine, text: str, name: str, **kw):
    path = engine.data_dir.parent / name
    path.write_text(text)
    fmt = kw.pop("format", None)
    signal_type = kw.pop("signal_type", None)
    return engine.ingest(
        read_records(path, format=fmt, signal_type=signal_type), source=str(path), **kw
    )


def test_jsonl_round_trip(engine):
    text = (
        "".join(
            f'{{"signal_type": "pdq", "signal_value": "{h}", "labels": ["csam", "t{i}"], '
            f'"external_id": "e{i}", "quality": 90, "expires_at": "2999-01-01T00:00:00Z"}}\n'
            for i, h in enumerate(PDQ)
        )
        + f'{{"signal_type": "md5", "hash": "{MD5}", "tags": "a;b"}}\n'
    )
    report = ingest_text(engine, text, "in.jsonl", list_name="l")
    assert (report.added, report.rejected) == (4, 0)
    stored = engine.store.signals(list_name="l")
    out = io.StringIO()
    write_records(stored, out)
    back = list(read_records(io.StringIO(out.getvalue()), format="jsonl"))
    assert [(r.signal_type, r.hash_hex, r.labels, r.external_id, r.quality) for r in back] == [
        ("pdq", PDQ[0], ("csam", "t0"), "e0", 90),
        ("pdq", PDQ[1], ("csam", "t1"), "e1", 90),
        ("pdq", PDQ[2], ("csam", "t2"), "e2", 90),
        ("md5", MD5, ("a", "b"), None, None),
    ]
    assert back[0].expires_at == pytest.approx(32472144000.0)
    again = engine.ingest(back, list_name="l")
    assert (again.added, again.unchanged) == (0, 4)  # the export re-ingests as a no-op


def test_csv_round_trip_with_threatexchange_columns(engine):
    text = "signal_type,signal_value,tags,id\n" + "".join(
        f"pdq,{h},csam tier1,{i}\n" for i, h in enumerate(PDQ)
    )
    report = ingest_text(engine, text, "in.csv", list_name="l")
    assert (report.added, report.rejected) == (3, 0)
    m = engine.match_hex("pdq", [PDQ[1]])[0][0]
    assert (m.labels, m.external_id) == (("csam", "tier1"), "1")
    out = io.StringIO()
    write_records(engine.store.signals(list_name="l"), out, format="csv")
    back = list(read_records(io.StringIO(out.getvalue()), format="csv"))
    assert [(r.hash_hex, r.labels, r.external_id) for r in back] == [
        (h, ("csam", "tier1"), str(i)) for i, h in enumerate(PDQ)
    ]


def test_hex_lines_need_a_type_and_round_trip(engine):
    text = "# a comment\n" + "\n".join(PDQ) + "\n\n"
    with pytest.raises(InvalidInput, match="--type"):
        ingest_text(engine, text, "in.txt", list_name="l")
    report = ingest_text(engine, text, "in.txt", list_name="l", signal_type="pdq")
    assert (report.added, report.rejected) == (3, 0)
    assert sorted(s.hash_hex for s in engine.store.signals(list_name="l")) == sorted(PDQ)


def test_vpdq_file_is_one_signal_of_many_frames(engine):
    frames = [*PDQ, PDQ[0]]
    text = "".join(f"{i},{90 + i},{h},{float(i):.3f}\n" for i, h in enumerate(frames))
    report = ingest_text(engine, text, "clip.vpdq", list_name="videos")
    assert (report.added, report.rejected) == (1, 0)
    (sig,) = engine.store.signals(list_name="videos")
    assert (sig.signal_type, sig.external_id) == ("vpdq", "clip")
    codes, qualities, stamps = engine.store.frames(sig.id)
    assert [c.tobytes().hex() for c in codes] == frames
    assert qualities == [90, 91, 92, 93] and stamps == [0.0, 1.0, 2.0, 3.0]
    # same file again: idempotent
    assert ingest_text(engine, text, "clip.vpdq", list_name="videos").unchanged == 1
    # a query video sharing 2 of its 3 frames with the stored one
    query = np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in (PDQ[0], PDQ[1])])
    (found,) = engine.match("vpdq", query, threshold=0)
    assert len(found) == 1
    assert found[0].query_match_pct == 100.0
    # repeated frames count once (as python-threatexchange): 2 of 3 distinct frames
    assert found[0].target_match_pct == pytest.approx(200 / 3)


def test_threatexchange_vpdq_csv_rows_ingest_as_videos(engine):
    """HMA/ThreatExchange CSV (and ``hashmatch hash --format te``) carry a vPDQ signal as
    python-threatexchange's JSON list of 'hex,quality,timestamp': one video signal."""
    # vpdq_util.VpdqCompactFeature.__str__ (its module needs the vpdq wheel): "{:.3}" is 3
    # significant digits, so long videos' timestamps come as e.g. "1.23e+03"
    stamps_in = [0.0, 1.0, 1234.5]
    value = json.dumps(
        [f"{h},{80 + i},{t:.3}" for i, (h, t) in enumerate(zip(PDQ, stamps_in, strict=True))]
    )
    rows = [["signal_type", "signal_value"], ["vpdq", value], ["vpdq", '["abc,1,0.0"]']]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    report = ingest_text(engine, buf.getvalue(), "te.csv", list_name="videos")
    assert (report.added, report.rejected) == (1, 1)
    (bad,) = report.rejections
    assert (bad.line, bad.field) == (3, "signal_value[0]") and "64 hex" in bad.reason
    (sig,) = engine.store.signals(list_name="videos")
    codes, qualities, stamps = engine.store.frames(sig.id)
    assert [c.tobytes().hex() for c in codes] == PDQ
    assert qualities == [80, 81, 82] and stamps == [0.0, 1.0, 1230.0]


def test_bad_vpdq_qualities_and_timestamps_are_refused_on_every_path(engine):
    """The store is the last gate: a quality of 500 or a NaN timestamp would skew every
    later vPDQ match, so the JSONL and vPDQ-text paths refuse them like gRPC does."""
    frames = [PDQ[0], PDQ[1]]
    good = {"signal_type": "vpdq", "frames": frames}
    lines = [
        {**good, "frame_qualities": [90, 500], "external_id": "q"},  # 1
        {**good, "timestamps": [0.0, -1.0], "external_id": "t"},  # 2
        {**good, "frame_qualities": [90], "external_id": "n"},  # 3: one for two frames
        {**good, "frame_qualities": ["90", 90], "external_id": "s"},  # 4: not an integer
        {**good, "frame_qualities": [90, 91], "timestamps": [0, 1.5], "external_id": "ok"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    report = ingest_text(engine, text, "videos.jsonl", list_name="videos")
    assert (report.added, report.rejected) == (1, 4)
    got = {r.line: (r.field, r.reason) for r in report.rejections}
    assert got[1] == ("frame_qualities[1]", "quality must be 0..100, got 500")
    assert got[2] == ("timestamps[1]", "a timestamp must be finite and >= 0, got -1.0")
    assert got[3][0] == "frame_qualities" and "1 frame_qualities for 2 frames" in got[3][1]
    assert got[4][0] == "frame_qualities[0]" and "integer" in got[4][1]
    nan_text = f"0,90,{PDQ[0]},nan\n1,90,{PDQ[1]},1.0\n"
    nan_report = ingest_text(engine, nan_text, "nan.vpdq", list_name="videos")
    assert nan_report.rejected == 1 and "finite" in nan_report.rejections[0].reason
    assert [s.external_id for s in engine.store.signals(list_name="videos")] == ["ok"]


def test_bad_lines_are_reported_with_line_numbers_and_reasons(engine):
    lines = [
        "signal_type,signal_value,labels",
        f"pdq,{PDQ[0]},ok",  # 2
        f"pdq,{PDQ[0][:-2]},short",  # 3: wrong length
        f"pdq,{PDQ[0][:-1]}g,nonhex",  # 4: non-hex
        f"tmk,{PDQ[1]},x",  # 5: unknown type
        "pdq",  # 6: missing column
        f"pdq,{PDQ[0]},dup",  # 7: duplicate of line 2
        f"md5,{MD5},ok",  # 8
    ]
    report = ingest_text(engine, "\n".join(lines) + "\n", "bad.csv", list_name="l")
    assert (report.added, report.rejected) == (2, 5)
    got = {r.line: r.reason for r in report.rejections}
    assert got[3] == "pdq hash must be 64 hex characters, got 62"
    assert got[4] == "pdq hash has a non-hex character 'g'"
    assert got[5].startswith("unknown signal type 'tmk'")
    assert got[6] == "missing column 'signal_value' (1 of 3 columns)"
    assert got[7] == "duplicate pdq hash within the input (first at line 2)"
    assert str(report.rejections[0]).startswith("line 3: ")


def test_duplicates_across_batches_are_caught(engine):
    text = "\n".join([PDQ[0], PDQ[1], PDQ[2], PDQ[1]]) + "\n"
    report = ingest_text(engine, text, "d.txt", list_name="l", signal_type="pdq", batch_size=2)
    assert (report.added, report.rejected) == (3, 1)
    assert report.rejections[0].line == 4
    assert "duplicate pdq hash within the input" in report.rejections[0].reason


def test_jsonl_bad_lines(engine):
    text = "\n".join(
        [
            "{not json",
            '["a list"]',
            '{"signal_value": "' + PDQ[0] + '"}',
            '{"signal_type": "pdq"}',
            '{"signal_type": "pdq", "signal_value": "' + PDQ[0] + '", "quality": "high"}',
            '{"signal_type": "pdq", "signal_value": "' + PDQ[0] + '", "quality": 101}',
        ]
    )
    report = ingest_text(engine, text, "bad.jsonl", list_name="l")
    got = {r.line: r.reason for r in report.rejections}
    assert report.added == 0 and report.rejected == 6
    assert got[1].startswith("not valid JSON")
    assert got[2] == "a JSONL line must be an object"
    assert got[3] == "missing column 'signal_type'"
    assert got[4] == "missing column 'signal_value'"
    assert got[5] == "quality must be an integer, got 'high'"
    assert got[6] == "quality must be 0..100, got 101"


def test_hash_output_the_readme_pipes_into_ingest_is_read_or_refused_by_name(tmp_path):
    """`hashmatch hash DIR` output, as the README says ingest reads it: its error record
    of an unreadable file is rejected naming why (it said "missing column
    'signal_type'"), and its `--format csv` output, which ingest does not read, names
    what to use (it was taken for plain hex: "plain hex lines carry no type")."""
    import skimage.data
    from click.testing import CliRunner
    from PIL import Image

    from hashmatch.server.cli import cli

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.camera()).save(photos / "camera.png")
    (photos / "bad.jpg").write_bytes(b"junk\njunk\n")
    data = str(tmp_path / "data")

    def run(*args: str):
        return CliRunner().invoke(cli, list(args))

    (tmp_path / "out.jsonl").write_text(run("hash", str(photos), "--types", "pdq").stdout)
    done = run("ingest", str(tmp_path / "out.jsonl"), "--list", "l", "--data-dir", data)
    assert done.exit_code == 0, done.output
    assert "added 1," in done.output and "rejected 1" in done.output
    assert f"line 1: an error record (UnsupportedMedia): {photos / 'bad.jpg'} was not hashed" in (
        done.output
    )
    (tmp_path / "out.csv").write_text(run("hash", str(photos), "--format", "csv").stdout)
    for name in ("out.csv", "-"):  # by suffix, and detected from the first line (stdin)
        text = (tmp_path / "out.csv").read_text()
        refused = CliRunner().invoke(
            cli, ["ingest", str(tmp_path / name) if name != "-" else "-", "--list", "l",
                  "--data-dir", data], input=text,
        )  # fmt: skip
        assert refused.exit_code == 1
        assert "CSV header lacks column(s) signal_type, signal_value" in refused.output
        assert "--format te or jsonl" in refused.output


def test_strict_refuses_the_whole_file_before_writing(engine):
    text = "\n".join([PDQ[0], PDQ[1], "zz"]) + "\n"
    with pytest.raises(IngestRefused) as info:
        ingest_text(engine, text, "s.txt", list_name="l", signal_type="pdq", strict=True)
    assert [r.line for r in info.value.report.rejections] == [3]
    assert engine.store.lists() == []  # not even the list was created
    assert engine.match_hex("pdq", [PDQ[0]])[0] == []


def test_csv_header_must_name_the_columns(engine):
    with pytest.raises(InvalidInput, match="signal_value"):
        ingest_text(engine, "signal_type,hash\npdq,00\n", "h.csv", list_name="l", format="csv")


def test_detect_format():
    assert detect_format('{"signal_type": "pdq"}') == "jsonl"
    assert detect_format("signal_type,signal_value,tags") == "csv"
    assert detect_format(f"0,100,{PDQ[0]},0.000") == "vpdq"
    assert detect_format(PDQ[0]) == "hex"
    assert detect_format("path,type,hash,quality") == "csv"  # a comma: never hex
    assert detect_format("", "x.ndjson") == "jsonl"


def test_ingest_streams_and_commits_batches_before_the_end(engine):
    """A generator that checks, mid-stream, that earlier batches are already durable."""
    rng = np.random.default_rng(4)
    committed_midway = []

    def lines():
        for i in range(3000):
            if i == 2500:
                committed_midway.append(engine.store.get_list("l").signal_count)
            yield rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() + "\n"

    report = engine.ingest(
        read_records(lines_stream(lines()), format="hex", signal_type="pdq"),
        list_name="l",
        batch_size=500,
    )
    assert report.added == 3000
    # the parser runs at most a few batches ahead of the writer (bounded memory)
    assert committed_midway and committed_midway[0] >= 2500 - 4 * 500


class lines_stream(io.TextIOBase):
    """A text stream over a generator (what a pipe looks like to the parser)."""

    def __init__(self, gen):
        self._gen = gen

    def __iter__(self):
        return self._gen

    def readable(self) -> bool:
        return True


def test_labels_with_nul_or_the_label_separator_are_rejected_in_every_path(engine):
    """CSV goes through the column fast path, JSONL through the per-record path: both
    must reject the line by name, never store it split (U+001F) or cut short (NUL)."""
    csv_lines = [
        "signal_type,signal_value,labels,external_id",
        f"pdq,{PDQ[0]},q\x00r,1",  # 2: NUL inside a label
        f"pdq,{PDQ[1]},fine,2",  # 3
        f"md5,{MD5},fine,ext\x00cut",  # 4: NUL in an external id
    ]
    report = ingest_text(engine, "\n".join(csv_lines) + "\n", "odd.csv", list_name="c")
    assert (report.added, report.rejected) == (1, 2)
    got = {r.line: r.reason for r in report.rejections}
    assert got[2].startswith("labels may not contain NUL")
    assert got[4] == "external_id may not contain NUL (U+0000)"
    jsonl = (
        f'{{"signal_type": "pdq", "signal_value": "{PDQ[2]}", "labels": ["a\\u001fb"]}}\n'
        f'{{"signal_type": "md5", "signal_value": "{MD5[::-1]}", "labels": ["q\\u0000r"]}}\n'
    )
    report = ingest_text(engine, jsonl, "odd.jsonl", list_name="j")
    assert (report.added, report.rejected) == (0, 2)
    assert engine.match("pdq", np.frombuffer(bytes.fromhex(PDQ[2]), np.uint8)[None])[0] == []


def test_a_file_that_is_not_utf8_is_a_clear_error(engine, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"signal_type,signal_value,labels\npdq,{PDQ[0]},caf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInput, match=r"latin1.csv is not UTF-8 text \(byte 0xe9\)"):
        engine.ingest(read_records(path), list_name="l")
