"""Where today's ingest pieces meet: detection by the first line (a comma means CSV, a
``vpdq [`` line means a vPDQ file) against ``TYPE HASH`` lines with comments and
vPDQ values, and gzip told by magic bytes on a pipe whose writer is slow."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hashmatch.engine.export import export_list
from hashmatch.engine.ingest import read_records
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(tmp_path / "data", eager=False)
    yield e
    e.close()


def _stored(engine: Engine, list_name: str) -> list[tuple[str, str]]:
    return sorted((s.signal_type, s.hash_hex) for s in engine.store.iter_signals(list_name))


def test_hex_export_led_by_a_video_reads_back_by_detection(engine, tmp_path):
    """`lists export --format hex` writes a vPDQ video as `vpdq [...]`; led by one, the
    file was detected as a single vPDQ file: "not a JSON list: Extra data", every signal
    lost (led by a photo it read back)."""
    frames = np.arange(64, dtype=np.uint8).reshape(2, 32)
    video = SignalRecord("vpdq", "", frames=frames, frame_qualities=[100, 90],
                         timestamps=[0.0, 1.0])  # fmt: skip
    engine.ingest([video, SignalRecord("pdq", PDQ)], list_name="src")
    out = io.StringIO()
    export_list(engine.store, "src", out, format="hex")
    assert out.getvalue().startswith("vpdq [")
    path = tmp_path / "src.txt"
    path.write_text(out.getvalue())
    report = engine.ingest(read_records(path), list_name="dst")
    assert (report.added, report.rejected) == (2, 0), report
    assert _stored(engine, "dst") == _stored(engine, "src")


def test_a_single_vpdq_json_line_is_still_one_video_named_by_its_file(engine, tmp_path):
    """`threatexchange hash video` output alone in a file stays the vPDQ format (its
    file's stem the external id)."""
    path = tmp_path / "clip7.txt"
    path.write_text('vpdq ["' + "ab" * 32 + ',100,0.0", "' + "cd" * 32 + ',90,1.0"]\n')
    (record,) = list(read_records(path))
    assert (record.signal_type, record.external_id, len(record.frames)) == ("vpdq", "clip7", 2)


@pytest.mark.parametrize("given_type", [None, "pdq"])
def test_a_leading_comment_with_a_comma_does_not_make_a_hash_list_a_csv(
    engine, tmp_path, given_type
):
    """A `# note, with a comma` first line made the file a CSV ("CSV header lacks
    column(s) signal_type, signal_value"), whole: `TYPE HASH` lines and bare hex with
    --type after a comment were read only when the comment held no comma."""
    path = tmp_path / "partner.txt"
    body = f"pdq {PDQ}\n" if given_type is None else f"{PDQ}\n"
    path.write_text(f"# from partner A, 2026-12-01\n{body}")
    report = engine.ingest(read_records(path, signal_type=given_type), list_name="l")
    assert (report.added, report.rejected) == (1, 0), report


def test_gzip_on_a_pipe_whose_first_write_is_one_byte_is_read(engine, tmp_path):
    """The magic bytes were peeked with one read: a writer that had sent one byte so
    far made a gzip stream "not UTF-8 text (byte 0x8b)"."""
    packed = gzip.compress(f"pdq {PDQ}\n".encode())
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb", buffering=0) as out:
            out.write(packed[:1])
            time.sleep(0.5)  # the reader has peeked by now
            out.write(packed[1:])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    report = engine.ingest(read_records(fifo), list_name="l")
    writer.join(5)
    assert (report.added, report.rejected) == (1, 0), report


@pytest.mark.parametrize("sep", ["\t", ";"])
def test_a_column_per_type_list_split_by_tabs_or_semicolons_is_a_csv_by_its_header(
    engine, tmp_path, sep
):
    """`id<TAB>md5<TAB>pdq` (a spreadsheet's TSV, Excel's `;`) saved as .txt: with no
    comma in the header it was taken for hash lines: `id md5` a TYPE HASH line (every
    row rejected, 'unknown signal type id'), or with `;` "plain hex lines carry no type".
    A typed line split by a tab (`pdq<TAB>HEX`) stays one."""
    path = tmp_path / "partner.txt"
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    path.write_text(sep.join(["id", "md5", "pdq"]) + "\n" + sep.join(["7", md5, PDQ]) + "\n")
    report = engine.ingest(read_records(path), list_name="l")
    assert (report.added, report.rejected) == (2, 0), report
    assert _stored(engine, "l") == [("md5", md5), ("pdq", PDQ)]
    typed = tmp_path / "typed.txt"
    typed.write_text(f"pdq\t{PDQ}\n")
    report = engine.ingest(read_records(typed), list_name="typed")
    assert (report.added, report.rejected) == (1, 0), report


@pytest.mark.parametrize("zipped", [False, True])
def test_a_bad_vpdq_file_from_a_stream_names_its_line_and_leaves_the_stream_open(tmp_path, zipped):
    """``_chain`` handed the text stream to ``yield from``, and a generator closed early
    closes its sub-iterator: a vPDQ file whose bad line stopped the parser closed the
    stream under the reader, then ``done`` (detach) raised 'I/O operation on closed
    file' instead of naming the line. a29f5cc mended files ingest opens (closed, not
    detached); stdin (``ingest -``) and a caller's stream still failed so, and a
    caller's stream was closed behind its back."""
    text = f"0,100,{PDQ},0.000\n1,100,zz,1.000\n".encode()
    path = tmp_path / "bad.vpdq"
    path.write_bytes(gzip.compress(text) if zipped else text)
    with open(path, "rb") as raw:
        (rejection,) = list(read_records(raw, format="vpdq"))
        assert not raw.closed
    assert rejection.line == 2 and "64 hex characters" in rejection.reason
    with open(path, "rb") as fh:
        stdin = subprocess.run(
            [sys.executable, "-m", "hashmatch.server.cli", "ingest", "-", "--list", "v",
             "--format", "vpdq", "--data-dir", str(tmp_path / "data")],
            stdin=fh, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert "I/O operation on closed file" not in stdin.stderr, stdin.stderr
    assert "line 2" in stdin.stderr and "rejected 1" in stdin.stdout, stdin.stdout + stdin.stderr
