"""Where today's ingest pieces meet: detection by the first line (a comma means CSV, a
``vpdq [`` line means a vPDQ file) against ``TYPE HASH`` lines with comments and
vPDQ values, and gzip told by magic bytes on a pipe whose writer is slow."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import os
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import proc_syscalls
import pytest

from hashmatch.engine.errors import InvalidInput
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
    peeked: list[bool] = []

    def feed() -> None:
        with open(fifo, "wb", buffering=0) as out:
            out.write(packed[:1])
            peeked.append(_waits_for_more(out.fileno(), fifo))
            out.write(packed[1:])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    report = engine.ingest(read_records(fifo), list_name="l")
    writer.join(5)
    assert (report.added, report.rejected) == (1, 0), report
    assert peeked == [True], "the reader never took the first byte alone and read again"


def _waits_for_more(write_fd: int, fifo: Path) -> bool:
    """Whether (within 30 s) the pipe's one byte was taken (none left unread in it) and
    a thread of this process is asleep in a read of ``fifo`` again: the reader has seen
    the first byte alone, the case under test (a fixed sleep passed whether or not it
    had, on a loaded box). Where /proc's call numbers are unknown, a 0.5 s sleep."""
    if proc_syscalls.READ is None:  # pragma: no cover - another architecture
        time.sleep(0.5)
        return True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        unread = fcntl.ioctl(write_fd, termios.FIONREAD, b"\0\0\0\0")
        if int.from_bytes(unread, sys.byteorder) == 0:
            for task in Path("/proc/self/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    call = proc_syscalls.syscall(task)
                    state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    fd = int(call[1], 16)
                    reading = call[0] in proc_syscalls.READ and state == "S" and fd != write_fd
                    if reading and os.readlink(f"/proc/self/fd/{fd}") == str(fifo):
                        return True
        time.sleep(0.01)
    return False


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


MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("partner.csv", f"signal_type,signal_value,labels\npdq,{PDQ},a\nmd5,{MD5},b\n"),
        ("partner.txt", f"signal_type\tsignal_value\npdq\t{PDQ}\nmd5\t{MD5}\n"),
        ("partner.csv", f"id,md5,pdq\n7,{MD5},{PDQ}\n"),
        ("partner.jsonl", f'{{"pdq": "{PDQ}"}}\n{{"md5": "{MD5}"}}\n'),
        ("pdq.csv", f"{PDQ},1,2020-01-01,a\n{'0' * 63}1,2,2020-01-01,b\n"),
    ],
)
def test_leading_comment_lines_are_skipped_in_every_format(engine, tmp_path, name, body):
    """`# exported from X on DATE` lines before a CSV header were read as the header
    ("CSV header lacks column(s)"), the whole file refused; before JSONL or a dump's
    rows they were a rejected line. Line numbers stay the file's."""
    path = tmp_path / name
    path.write_text(f"# exported from Partner X on 2026-12-01\n#\n# 2 rows, 1 list\n\n{body}")
    report = engine.ingest(read_records(path), list_name="l")
    assert (report.added, report.rejected) == (2, 0), report
    path.write_text(f"# exported from X, on 2026-12-01\n{body}x\n")
    report = engine.ingest(read_records(path), list_name="l2")
    assert report.added == 2 and [r.line for r in report.rejections] == [body.count("\n") + 2]


def test_a_column_per_type_csv_led_by_a_blank_line_reads_its_header(engine, tmp_path):
    """The header was the first row even when blank: `id,md5,pdq` became a data row
    (two rejections) and the rows after it were read without their column names."""
    path = tmp_path / "partner.csv"
    path.write_text(f"\nid,md5,pdq\n7,{MD5},{PDQ}\n")
    report = engine.ingest(read_records(path), list_name="l")
    assert (report.added, report.rejected) == (2, 0), report


def test_a_column_per_type_csv_keeps_the_external_id_as_written(engine, tmp_path):
    """A signal_type CSV keeps ` e1 ` (the partner's key, spaces and all); the column
    per type form stripped it to `e1`: the same row, another id by its shape."""
    path = tmp_path / "partner.csv"
    path.write_text(f"id,pdq\n e1 ,{PDQ}\n")
    engine.ingest(read_records(path), list_name="l")
    assert [s.external_id for s in engine.store.iter_signals("l")] == [" e1 "]


@pytest.mark.parametrize(
    ("first", "given_type"),
    [
        (f"{PDQ} # from partner A, batch 3", "pdq"),
        (f"{PDQ}# note, x", "pdq"),
        (f"pdq {PDQ}  # note, x", None),
        (f"pdq:{PDQ} # note; x", None),
    ],
)
def test_a_hash_line_with_a_trailing_note_is_its_hash(engine, tmp_path, first, given_type):
    """`HEX # note, x` first made the file a CSV ("CSV header lacks column(s)"); without
    a comma, the note was part of the hash ("must be 64 hex characters, got 73")."""
    path = tmp_path / "hashes.txt"
    path.write_text(f"{first}\n{'0' * 63}1  # another note\n")
    report = engine.ingest(read_records(path, signal_type=given_type or "pdq"), list_name="l")
    assert (report.added, report.rejected) == (2, 0), report


def test_a_lone_video_line_with_a_note_is_the_video(engine, tmp_path):
    path = tmp_path / "clip.txt"
    path.write_text('vpdq ["' + "ab" * 32 + ',100,0.0"]  # clip 7, partner A\n')
    (record,) = list(read_records(path))
    assert (record.signal_type, len(record.frames)) == ("vpdq", 1)


def test_a_typed_tab_line_with_a_bad_hash_is_rejected_not_taken_for_a_header(engine, tmp_path):
    """`pdq<TAB>zz..` (a bad hash) looked like a column-per-type header: the line was
    lost without a word (`added 0, rejected 0`, exit 0)."""
    path = tmp_path / "signals.txt"
    path.write_text(f"pdq\tzz{PDQ[2:]}\npdq\t{'0' * 63}1\n")
    report = engine.ingest(read_records(path), list_name="l")
    assert (report.added, report.rejected) == (1, 1), report
    assert report.rejections[0].line == 1


def test_a_dump_whose_first_hash_is_cut_short_rejects_that_line(engine, tmp_path):
    """A ThreatExchange dump is told by its first row (hex, then a numeric id): one of
    31 hex characters made `video_md5.csv` a headered CSV, the whole file refused
    ("CSV header lacks column(s)") instead of that line."""
    path = tmp_path / "video_md5.csv"
    path.write_text(f"{MD5[1:]},1,2020-01-01,a\n{MD5},2,2020-01-01,b\n")
    report = engine.ingest(read_records(path), list_name="l")
    assert (report.added, [r.line for r in report.rejections]) == (1, [1]), report


def test_a_csv_without_a_header_is_refused_not_read_as_one(engine, tmp_path):
    """`pdq,HEX` first took its line for a header naming a `pdq` column: a one-line
    file stored nothing and said `rejected 0`, longer ones had every row refused."""
    path = tmp_path / "partner.csv"
    path.write_text(f"pdq,{PDQ}\n")
    with pytest.raises(InvalidInput, match=r"first line names its columns, this one holds a hash"):
        engine.ingest(read_records(path), list_name="l")
    assert not engine.store.lists(names=["l"])


def test_excels_separator_line_is_no_header(engine, tmp_path):
    """Excel's `sep=;` first line (its hint of the separator) was read as the header:
    "CSV header lacks column(s) ... (found: sep=)", the file refused."""
    path = tmp_path / "excel.csv"
    path.write_bytes(f"\ufeffsep=;\r\nsignal_type;signal_value\r\npdq;{PDQ}\r\n".encode())
    report = engine.ingest(read_records(path), list_name="l")
    assert (report.added, report.rejected) == (1, 0), report
