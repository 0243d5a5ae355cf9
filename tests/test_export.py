"""`hashmatch lists export`: a list written out ingests into another store as the same
signals (JSONL and CSV, every field, vPDQ frames), its retractions apply with
`retract --file`, and a failed export leaves no file behind."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from list_state import list_state

from hashmatch.engine.errors import InvalidInput, NotFound
from hashmatch.engine.export import export_list
from hashmatch.engine.ingest import read_records
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    source, copy = Engine.open(root / "a", eager=False), Engine.open(root / "b", eager=False)
    yield source, copy
    source.close()
    copy.close()


def _state(engine: Engine, list_name: str) -> list[tuple]:
    return list_state(engine, list_name)


_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
_md5 = st.binary(min_size=16, max_size=16).map(bytes.hex)
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x1f"),
                min_size=1, max_size=12)  # fmt: skip
_csv_label = st.from_regex(r"[A-Za-z0-9_.:/\-é]{1,10}", fullmatch=True)
_expiry = st.one_of(st.none(), st.floats(1e9, 4e9, allow_nan=False), st.just(NOW - 1))


@st.composite
def _signals(draw, label=_text, external_id=_text):
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from(["pdq", "md5", "vpdq"]))
        common = dict(
            labels=tuple(draw(st.lists(label, max_size=3))),
            external_id=draw(st.one_of(st.none(), external_id)),
            quality=draw(st.one_of(st.none(), st.integers(0, 100))),
            expires_at=draw(_expiry),
        )
        if kind == "vpdq":
            k = draw(st.integers(1, 4))
            frames = np.frombuffer(draw(st.binary(min_size=32 * k, max_size=32 * k)), np.uint8)
            out.append(SignalRecord("vpdq", "", frames=frames.reshape(k, 32),
                                    frame_qualities=draw(st.lists(st.integers(0, 100),
                                                                  min_size=k, max_size=k)),
                                    timestamps=[i * 0.5 + j / 3 for j in range(k)],
                                    **common))  # fmt: skip
        else:
            out.append(SignalRecord(kind, draw(_hex if kind == "pdq" else _md5), **common))
    unique = {}  # a list holds a hash once: a repeat in one input is a rejected line
    for rec in out:
        key = rec.frames.tobytes() if rec.frames is not None else rec.hash_hex
        unique.setdefault((rec.signal_type, key), rec)
    return list(unique.values())


def _round_trip(stores, records, fmt: str, tag: str) -> None:
    source, copy = stores
    report = source.ingest(records, list_name=f"src-{tag}")
    assert report.rejected == 0, report
    out = io.StringIO()
    written = export_list(source.store, f"src-{tag}", out, format=fmt, now=NOW).written
    back = copy.ingest(read_records(io.StringIO(out.getvalue()), format=fmt),
                       list_name=f"dst-{tag}")  # fmt: skip
    assert (back.rejected, back.added, written) == (0, report.added, report.added), back
    assert _state(copy, f"dst-{tag}") == _state(source, f"src-{tag}")


_counter = iter(range(10**9))


_EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_EXAMPLES
@given(records=_signals())
def test_jsonl_export_ingests_back_to_the_same_signals(stores, records):
    _round_trip(stores, records, "jsonl", f"j{next(_counter)}")


@_EXAMPLES
@given(records=_signals(label=_csv_label, external_id=_text.filter(lambda t: "\r" not in t)))
def test_csv_export_ingests_back_to_the_same_signals(stores, records):
    _round_trip(stores, records, "csv", f"c{next(_counter)}")


def test_csv_refuses_a_label_it_would_split_and_jsonl_keeps_it(stores):
    source, _ = stores
    source.ingest([SignalRecord("md5", "ab" * 16, labels=("tier 1",))], list_name="spaced")
    with pytest.raises(InvalidInput, match=r"label 'tier 1' of md5 signal id \d+ .*use JSONL"):
        export_list(source.store, "spaced", io.StringIO(), format="csv")
    out = io.StringIO()
    export_list(source.store, "spaced", out, format="jsonl")
    assert json.loads(out.getvalue())["labels"] == ["tier 1"]
    source.ingest([SignalRecord("md5", "cd" * 16, external_id="a\rb")], list_name="cr")
    with pytest.raises(InvalidInput, match=r"external id 'a\\rb' .* carriage return"):
        export_list(source.store, "cr", io.StringIO(), format="csv")


def test_csv_refuses_a_video_stored_without_frame_details_by_its_id(stores):
    source, _ = stores
    frames = np.arange(64, dtype=np.uint8).reshape(2, 32)
    source.ingest([SignalRecord("vpdq", "", frames=frames)], list_name="bare-video")
    with pytest.raises(InvalidInput, match=r"vpdq signal id \d+ was stored without frame"):
        export_list(source.store, "bare-video", io.StringIO(), format="csv")


def test_expired_signals_are_exported_unless_skipped_and_retracted_ones_never(stores):
    source, _ = stores
    keep, old, gone = "01" * 32, "02" * 32, "03" * 32
    source.ingest([SignalRecord("pdq", keep), SignalRecord("pdq", old, expires_at=NOW - 5),
                   SignalRecord("pdq", gone)], list_name="mixed")  # fmt: skip
    source.store.retract(list_name="mixed", hashes=[("pdq", gone)])

    def exported(**kw) -> list[str]:
        out = io.StringIO()
        export_list(source.store, "mixed", out, now=NOW, **kw)
        return [json.loads(line)["signal_value"] for line in out.getvalue().splitlines()]

    assert exported() == [keep, old]
    assert exported(skip_expired=True) == [keep]
    out = io.StringIO()
    assert export_list(source.store, "mixed", out, retracted=True).written == 1
    assert out.getvalue() == f"pdq:{gone}\n"
    source.store.retract(list_name="mixed", hashes=[("pdq", old)])
    out = io.StringIO()  # a retraction goes out even past its expiry: a copy may differ
    export_list(source.store, "mixed", out, retracted=True, skip_expired=True, now=NOW)
    assert out.getvalue() == f"pdq:{old}\npdq:{gone}\n"


def test_unknown_list_and_format_are_refused_before_writing(stores):
    source, _ = stores
    out = io.StringIO()
    with pytest.raises(NotFound, match="no hash list named 'nope'"):
        export_list(source.store, "nope", out)
    with pytest.raises(InvalidInput, match="unknown export format 'xml'"):
        export_list(source.store, "mixed", out, format="xml")
    assert out.getvalue() == ""


def test_export_pages_through_a_list_larger_than_a_page(stores):
    source, _ = stores
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (2500, 32), dtype=np.uint8)
    source.ingest([SignalRecord("pdq", c.tobytes().hex()) for c in codes], list_name="big")
    seen = [info.hash_hex for info in source.store.iter_signals("big", page=1000)]
    assert seen == [c.tobytes().hex() for c in codes]  # id order, each once


def _vm_steps(store, list_name: str, page: int) -> int:
    """SQLite VM instructions (in thousands) reading a list a page at a time."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.conn().set_progress_handler(count, 1000)
    try:
        for _ in store.iter_signals(list_name, page=page):
            pass
    finally:
        store.conn().set_progress_handler(None, 0)
    return steps[0]


def test_reading_a_list_in_pages_costs_what_reading_it_at_once_does(stores):
    """Each page was `list_id = ? AND id > ? ORDER BY id LIMIT ?`, which SQLite answered
    by reading and sorting the whole list (its index is by hash, not id): N/page pages
    of N rows, a 400k-signal export took a minute. Counted in SQLite's own steps, not
    time: 20 pages must cost about what one does (it was ~20x)."""
    source, _ = stores
    codes = np.random.default_rng(11).integers(0, 256, (6000, 32), dtype=np.uint8)
    source.ingest([SignalRecord("pdq", c.tobytes().hex()) for c in codes], list_name="paged")
    one, many = _vm_steps(source.store, "paged", 6000), _vm_steps(source.store, "paged", 300)
    assert many < 2 * one, (one, many)


def test_signals_added_or_retracted_while_a_list_is_read_are_seen_once(stores):
    """A page is read as the list is then: a signal retracted before its page is left
    out; one added meanwhile (to this list, not another) comes after the rest, once."""
    source, _ = stores
    first = [SignalRecord("pdq", f"{i:064x}") for i in range(1, 2501)]
    source.ingest(first, list_name="moving")
    signals = source.store.iter_signals("moving", page=1000)
    seen = [info.hash_hex for info in itertools.islice(signals, 1000)]  # the first page
    source.store.retract(list_name="moving", hashes=[("pdq", f"{2000:064x}")])
    source.ingest([SignalRecord("pdq", f"{i:064x}") for i in range(5001, 5011)],
                  list_name="moving")  # fmt: skip
    source.ingest([SignalRecord("pdq", f"{9:064x}")], list_name="elsewhere")
    seen += [info.hash_hex for info in signals]
    expected = [f"{i:064x}" for i in (*range(1, 2501), *range(5001, 5011)) if i != 2000]
    assert seen == expected
    source.store.create_list("empty")  # no ids to read: only what is added after
    assert list(source.store.iter_signals("empty")) == []


# -- the CLI verb ------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args: str, data: str = "a", code: int = 0):
        env = {"HASHMATCH_DATA_DIR": str(tmp_path / data)}
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_cli_export_moves_a_list_and_its_retractions_to_another_store(run, tmp_path):
    rows = "".join(f"pdq,{i:064x},csam;tier1,e{i},90,\n" for i in range(1, 6))
    (tmp_path / "in.csv").write_text("signal_type,signal_value,labels,external_id,quality,"
                                     "expires_at\n" + rows)  # fmt: skip
    run("ingest", str(tmp_path / "in.csv"), "--list", "partner")
    export = tmp_path / "partner.csv"
    out = run("lists", "export", "partner", "--out", str(export)).output
    assert f"exported 5 signal(s) as csv of 'partner' to {export}" in out
    assert export.read_text().startswith("signal_type,signal_value,labels,external_id")
    run("ingest", str(export), "--list", "partner", data="b")
    assert "5 live signal(s)" in run("lists", "ls", data="b").output

    run("retract", "--list", "partner", f"pdq:{2:064x}", f"pdq:{4:064x}")
    gone = tmp_path / "retracted.txt"
    run("lists", "export", "partner", "--retracted", "--out", str(gone))
    assert gone.read_text() == f"pdq:{2:064x}\npdq:{4:064x}\n"
    out = run("retract", "--list", "partner", "--file", str(gone), data="b").output
    assert "retracted 2 signal(s)" in out
    assert "3 live signal(s)" in run("lists", "ls", data="b").output

    audit = json.loads(run("audit", "--json", "--action", "export").output)
    assert [(e["count"], e["details"]["format"]) for e in audit] == [(2, "targets"), (5, "csv")]


def test_csv_external_ids_keep_their_spaces_as_pytx_reads_them(run, tmp_path):
    """A CSV external id is the partner's key, kept as written, spaces too (pytx reads
    and writes CSV cells verbatim with the csv module; JSONL ids are kept as given):
    " e1" and "e1" are two ids, on the plain-line path and on the csv.reader one (a
    quoted cell), through an export and back; retracting by "e1" leaves " e1"."""
    header = "signal_type,signal_value,labels,external_id\n"
    plain = "".join(f"pdq,{i:064x},x,{e}\n" for i, e in ((1, " e1"), (2, "e1"), (3, "e3 ")))
    (tmp_path / "plain.csv").write_text(header + plain)
    (tmp_path / "quoted.csv").write_text(header + f'pdq,{4:064x},x," e4 "\npdq,{5:064x},x, e5\n')
    run("ingest", str(tmp_path / "plain.csv"), "--list", "partner")
    run("ingest", str(tmp_path / "quoted.csv"), "--list", "partner")
    export = tmp_path / "partner.csv"
    run("lists", "export", "partner", "--out", str(export))
    run("ingest", str(export), "--list", "partner", data="b")
    retracted = run("retract", "--list", "partner", "--external-id", "e1", data="b").output
    assert "retracted 1 signal(s)" in retracted
    live = tmp_path / "live.jsonl"
    run("lists", "export", "partner", "--out", str(live), data="b")
    ids = [json.loads(line)["external_id"] for line in live.read_text().splitlines()]
    assert sorted(ids) == [" e1", " e4 ", " e5", "e3 "]


def test_cli_failed_export_leaves_no_file(run, tmp_path):
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"signal_type": "pdq", "signal_value": "0f" * 32, "labels": ["tier 1"]}) + "\n"
    )
    run("ingest", str(tmp_path / "in.jsonl"), "--list", "l")
    target = tmp_path / "l.csv"
    out = run("lists", "export", "l", "--out", str(target), code=1).output
    assert "label 'tier 1'" in out and "use JSONL" in out
    assert list(tmp_path.glob("*l.csv*")) == []  # neither the file nor its temp
    out = run("lists", "export", "nope", code=1).output
    assert "no hash list named 'nope'" in out
    out = run("lists", "export", "l", "--retracted", "--format", "csv", code=2).output
    assert "--retracted writes every retracted signal as a type:hex line" in out


def test_cli_failed_export_to_stdout_writes_nothing_and_is_not_audited(run, tmp_path):
    """A refusal part way must not send the rows before it down a pipe into someone's
    ingest; and only a finished export is in the audit log."""
    lines = [{"signal_type": "pdq", "signal_value": f"{i:064x}", "labels": [label]}
             for i, label in ((1, "ok"), (2, "ok"), (3, "tier 1"))]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run("ingest", str(tmp_path / "in.jsonl"), "--list", "l")
    failed = run("lists", "export", "l", "--format", "csv", code=1)
    assert failed.stdout == "" and "label 'tier 1'" in failed.stderr
    assert json.loads(run("audit", "--json", "--action", "export").stdout) == []
    whole = run("lists", "export", "l")  # JSONL carries it: all three, then audited
    assert [json.loads(x)["labels"] for x in whole.stdout.splitlines()] == [
        ["ok"],
        ["ok"],
        ["tier 1"],
    ]
    assert [e["count"] for e in json.loads(run("audit", "--json").stdout)
            if e["action"] == "export"] == [3]  # fmt: skip


def test_cli_export_options_that_would_mislead_are_refused(run, tmp_path):
    run("lists", "create", "l")
    out = run("lists", "export", "l", "--format", "csv", "--out", str(tmp_path / "x.jsonl"),
              code=2).output  # fmt: skip
    assert "--format csv but --out ends in .jsonl: ingest reads the format" in out
    out = run("lists", "export", "l", "--retracted", "--skip-expired", code=2).output
    assert "leave out --format and --skip-expired" in out
    retracted_csv = tmp_path / "r.csv"  # the suffix is not a --format for --retracted
    run("lists", "export", "l", "--retracted", "--out", str(retracted_csv))
    assert retracted_csv.read_text() == ""
    out = run("lists", "export", "l", "--out", str(tmp_path / "no" / "x.jsonl"), code=1).output
    assert f"{tmp_path / 'no' / 'x.jsonl'}: No such file or directory" in out
    assert ".tmp-" not in out  # the temp file is not what the operator named


def test_cli_reingest_names_the_signals_that_stay_retracted_for_restore_file(run, tmp_path):
    """Re-ingesting never un-retracts; the notice names which re-sent signals stay
    retracted, as lines `restore --file` reads (the sharer's restore can follow)."""
    rows = "".join(f"pdq,{i:064x}\n" for i in range(1, 26))
    (tmp_path / "in.csv").write_text("signal_type,signal_value\n" + rows)
    run("ingest", str(tmp_path / "in.csv"), "--list", "partner b")
    gone = [f"pdq:{i:064x}" for i in range(1, 23)]
    run("retract", "--list", "partner b", *gone)
    again = run("ingest", str(tmp_path / "in.csv"), "--list", "partner b")
    assert "22 re-ingested signal(s) stay retracted" in again.stdout
    named = [line.strip() for line in again.stderr.splitlines() if line.startswith("    pdq:")]
    assert named == gone[:20]
    assert "... and 2 more (`hashmatch retracted --list 'partner b'` lists them)" in again.stderr
    (tmp_path / "restore.txt").write_text("\n".join(named[:3]) + "\n")
    out = run("restore", "--list", "partner b", "--file", str(tmp_path / "restore.txt")).output
    assert "restored 3 signal(s)" in out


def test_cli_export_to_gz_is_gzip_in_the_format_beneath(run, tmp_path):
    """`--out partner.csv.gz` is a gzip of the CSV (before, JSONL, uncompressed, under
    that name); ingest reads it back; the same list gives the same bytes."""
    import gzip

    rows = "".join(f"pdq,{i:064x},csam,e{i},90,\n" for i in range(1, 4))
    (tmp_path / "in.csv").write_text("signal_type,signal_value,labels,external_id,quality,"
                                     "expires_at\n" + rows)  # fmt: skip
    run("ingest", str(tmp_path / "in.csv"), "--list", "partner")
    target = tmp_path / "partner.csv.gz"
    out = run("lists", "export", "partner", "--out", str(target)).output
    assert "as csv of 'partner'" in out
    first = target.read_bytes()
    assert gzip.decompress(first).decode().startswith("signal_type,signal_value,labels")
    run("lists", "export", "partner", "--out", str(target))
    assert target.read_bytes() == first
    run("ingest", str(target), "--list", "partner", data="b")
    assert "3 live signal(s)" in run("lists", "ls", data="b").output
    out = run("lists", "export", "partner", "--format", "jsonl", "--out", str(target),
              code=2).output  # fmt: skip
    assert "--format jsonl but --out ends in .csv" in out


def test_cli_retract_file_reads_pytx_type_hash_lines(run, tmp_path):
    """A partner on python-threatexchange sends its withdrawals as `TYPE HASH` lines (its
    local_file form, `lists export --format hex`): `retract --file` and `restore --file`
    read them (they stopped at the first line: 'got 68')."""
    rows = "".join(f"pdq,{i:064x}\n" for i in range(1, 4)) + "video_md5," + "ab" * 16 + "\n"
    (tmp_path / "in.csv").write_text("signal_type,signal_value\n" + rows)
    run("ingest", str(tmp_path / "in.csv"), "--list", "l")
    gone = tmp_path / "gone.txt"
    gone.write_text(f"pdq {1:064x}\nvideo_md5 {'ab' * 16}\n")
    assert "retracted 2 signal(s)" in run("retract", "--list", "l", "--file", str(gone)).output
    assert "2 live signal(s)" in run("lists", "ls").output
    assert "restored 2 signal(s)" in run("restore", "--list", "l", "--file", str(gone)).output


def test_cli_retract_file_reads_a_hex_export_holding_videos(run, tmp_path):
    """`lists export --format hex` (pytx's local_file lines) writes a video as `vpdq
    [frames]`; `retract --file` of such a file stopped at that line ("vpdq hash must be
    64 hex characters, got 151"), the photos beside it not retracted either. The frame
    list names the video as its `vpdq:<fingerprint>` (`--retracted`'s line) does."""
    frames = [f"{i + 9:064x},100,{float(i)!r}" for i in range(2)]
    rows = [{"signal_type": "vpdq", "signal_value": json.dumps(frames)},
            {"signal_type": "pdq", "signal_value": f"{3:064x}"}]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("ingest", str(tmp_path / "in.jsonl"), "--list", "l")
    export = tmp_path / "l.txt"
    run("lists", "export", "l", "--format", "hex", "--out", str(export))
    assert export.read_text().startswith("vpdq [")
    done = run("retract", "--list", "l", "--file", str(export)).output
    assert "retracted 2 signal(s) in 'l' (2 requested)" in done
    assert run("lists", "export", "l", "--retracted").stdout.startswith("vpdq:")
    assert "restored 2 signal(s)" in run("restore", "--list", "l", "--file", str(export)).output


def _kill_export_midway(data: Path, target: Path) -> Path | None:
    """Run `lists export --out target` in a real process and SIGKILL it once its temp
    file has bytes; the temp it left, or None when the export finished first."""
    env = {**os.environ, "HASHMATCH_DATA_DIR": str(data)}
    child = subprocess.Popen([sys.executable, "-m", "hashmatch.server.cli", "lists", "export",
                              "big", "--out", str(target)], env=env)  # fmt: skip
    temp = target.with_name(f".{target.name}.tmp-{child.pid}")
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        if temp.exists() and temp.stat().st_size:
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait(30)
    return temp if child.returncode == -signal.SIGKILL else None


def test_an_export_killed_midway_leaves_a_temp_the_next_export_removes(run, tmp_path):
    """kill -9 (an OOM kill, `timeout -s KILL`) leaves the hidden partial copy of the
    list; nothing freed it: every killed export left one more copy of the list's hashes."""
    rows = "".join(f"{i:064x}\n" for i in range(1, 30_001))
    (tmp_path / "in.txt").write_text(rows)
    run("ingest", str(tmp_path / "in.txt"), "--list", "big", "--type", "pdq")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "big.jsonl.gz"
    for _ in range(5):  # the export usually takes > 1 s: the kill lands in it
        left = _kill_export_midway(tmp_path / "a", target)
        if left is not None:
            break
    else:
        pytest.fail("every export finished before the kill")
    assert left.exists() and not target.exists()
    dead = left.name.rsplit("-", 1)[1]
    other = out / f".big.jsonl.tmp-{dead}"  # another target's: left alone
    live = out / ".big.jsonl.gz.tmp-1"  # a running export's (pid 1 runs): left alone
    for kept in (other, live):
        kept.write_text("x")
    run("lists", "export", "big", "--out", str(target))
    assert sorted(p.name for p in out.iterdir()) == sorted([other.name, live.name, target.name])
    assert len(list(read_records(target))) == 30_000
