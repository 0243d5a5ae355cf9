"""A trust-and-safety engineer's bad day ingesting partner exports: junk expiries,
over-wide CSV rows, BOMs on stdin and in retraction files, parallel first ingests,
somebody else's SQLite file, an unwritable data dir. Every input is generated here."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hashmatch.engine.errors import Conflict, CorruptData, InvalidInput
from hashmatch.engine.ingest import parse_time, read_records
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalStore
from hashmatch.server.cli import cli

H = [f"{i:064x}" for i in range(1, 6)]


@pytest.fixture
def engine(tmp_path):
    e = Engine.open(tmp_path / "data")
    yield e
    e.close()


def _ingest(engine: Engine, path: Path, **kw):
    return engine.ingest(read_records(path), source=str(path), list_name="p", **kw)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf")])
def test_a_non_finite_expiry_is_a_bad_time_not_a_crash(value):
    with pytest.raises(InvalidInput, match="not a time"):
        parse_time(value)


def test_an_epoch_in_milliseconds_is_refused_with_a_hint():
    with pytest.raises(InvalidInput, match="milliseconds"):
        parse_time("1700000000000")
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time(253402300799) == 253402300799.0  # 9999-12-31T23:59:59Z still fits


def test_junk_expiries_reject_their_lines_and_keep_the_good_rows(engine, tmp_path):
    """Before: NaN reached SQLite's JSON as ``NaN``: a traceback, the batch rolled back."""
    path = tmp_path / "n.csv"
    path.write_text(
        "signal_type,signal_value,expires_at\n"
        f"pdq,{H[0]},nan\npdq,{H[1]},2030-01-01\npdq,{H[2]},1e12\n"
    )
    report = _ingest(engine, path)
    assert (report.added, report.rejected) == (1, 2)
    assert [(r.line, "not a time" in r.reason) for r in report.rejections] == [
        (2, True), (4, True),
    ]  # fmt: skip
    assert "milliseconds" in report.rejections[1].reason
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text(f'{{"signal_type": "pdq", "signal_value": "{H[3]}", "expires_at": NaN}}\n')
    report = _ingest(engine, jsonl)
    assert report.rejected == 1 and report.rejections[0].line == 1


def test_a_row_wider_than_the_header_is_rejected_not_shifted(engine, tmp_path):
    """A partner's unquoted comma: before, labels and external id shifted silently."""
    path = tmp_path / "wide.csv"
    rows = [f"pdq,{H[0]},a,b,ext1", f"pdq,{H[1]},c,ext2,,", f"pdq,{H[2]},d,ext3"]
    path.write_text("signal_type,signal_value,labels,external_id\n" + "\n".join(rows) + "\n")
    report = _ingest(engine, path)
    assert (report.added, report.rejected) == (2, 1)  # trailing empty columns are fine
    (bad,) = report.rejections
    assert bad.line == 2 and "5 columns, the header names 4" in bad.reason
    stored = {s.external_id for s in engine.store.signals(list_name="p")}
    assert stored == {"ext2", "ext3"}


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    data = tmp_path / "foreign"
    data.mkdir()
    conn = sqlite3.connect(data / "store.sqlite")
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    before = (data / "store.sqlite").read_bytes()
    with pytest.raises(CorruptData, match=r"not a hashmatch store.*customers"):
        SignalStore(data / "store.sqlite")
    assert (data / "store.sqlite").read_bytes() == before  # not even switched to WAL
    conn = sqlite3.connect(data / "store.sqlite")
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables <= {"customers", "schema_version"}  # no hashmatch tables added


def test_a_directory_in_place_of_the_store_is_a_clear_error(tmp_path):
    (tmp_path / "dd" / "store.sqlite").mkdir(parents=True)
    with pytest.raises(Conflict, match=r"cannot open .*store\.sqlite.*-wal/-shm"):
        SignalStore(tmp_path / "dd" / "store.sqlite")


_OPEN_AND_INGEST = """
import sys, time
from hashmatch.engine.runtime import Engine
from hashmatch.engine.ingest import read_records
time.sleep(max(float(sys.argv[4]) - time.time(), 0))  # both open at the same moment
e = Engine.open(sys.argv[1])
e.ingest(read_records(sys.argv[2]), source=sys.argv[2], list_name=sys.argv[3])
e.close()
"""


def test_two_processes_creating_the_same_store_both_succeed(tmp_path):
    """Before: about half the races failed ("store was lost", or migrations run twice)."""
    path = tmp_path / "s.csv"
    path.write_text("signal_type,signal_value\n" + "".join(f"pdq,{h}\n" for h in H))
    for attempt in range(4):
        data = tmp_path / f"race{attempt}"
        start = str(time.time() + 1.5)  # after both have imported hashmatch
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AND_INGEST, str(data), str(path), name, start],
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        store = SignalStore(data / "store.sqlite")
        assert {h.name: h.signal_count for h in store.lists()} == {"a": 5, "b": 5}
        store.close()


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    env = {"HASHMATCH_DATA_DIR": str(tmp_path / "data")}

    def invoke(*args: str, ok: bool = True, input: bytes | None = None):
        result = runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_stdin_ingest_strips_a_bom(run):
    text = f'{{"signal_type": "pdq", "signal_value": "{H[0]}"}}\n'.encode()
    out = run("ingest", "-", "--list", "j", "--format", "jsonl", input=b"\xef\xbb\xbf" + text)
    assert "added 1" in out.output and "rejected 0" in out.output


@pytest.mark.parametrize("size", ["0", "-1"])
def test_batch_size_must_be_positive(run, tmp_path, size):
    path = tmp_path / "s.csv"
    path.write_text(f"signal_type,signal_value\npdq,{H[0]}\n")
    result = run("ingest", str(path), "--list", "s", "--batch-size", size, ok=False)
    assert result.exit_code == 2 and "--batch-size" in result.output


def test_retract_file_names_the_bad_line_and_reads_a_bom(run, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("signal_type,signal_value\n" + "".join(f"pdq,{h}\n" for h in H[:2]))
    run("ingest", str(path), "--list", "p")
    bad = tmp_path / "ret.txt"
    bad.write_bytes(f"\ufeff{H[0]}\n# partner note\n\nzz\n{H[1]}\n".encode())
    result = run("retract", "--list", "p", "--file", str(bad), ok=False)
    assert result.exit_code == 1
    assert f"{bad} line 4: pdq hash must be 64 hex characters, got 2" in result.output
    good = tmp_path / "ret2.txt"
    good.write_bytes(f"\ufeff{H[0]}\n".encode())  # the BOM is not part of the hash
    assert "retracted 1 signal(s)" in run("retract", "--list", "p", "--file", str(good)).output


def test_lists_count_expired_signals_apart_from_live_ones(run, tmp_path):
    """Before: ``lists ls`` called expired signals live (they never match)."""
    path = tmp_path / "e.csv"
    path.write_text(
        "signal_type,signal_value,expires_at\n"
        f"pdq,{H[0]},2001-01-01\npdq,{H[1]},2001-01-02\npdq,{H[2]},2999-01-01\npdq,{H[3]},\n"
    )
    run("ingest", str(path), "--list", "e")
    run("retract", "--list", "e", H[0])  # retracted: counted there, not as expired
    out = run("lists", "ls").output
    assert "1 list(s), 2 live signal(s), 1 expired" in out
    (info,) = json.loads(run("lists", "ls", "--json").output)
    assert (info["signal_count"], info["expired_count"], info["retracted_count"]) == (3, 1, 1)


def test_lenient_values_are_rejected_not_rounded(engine, tmp_path):
    """Before: JSON ``true`` and ``1.9`` were stored as quality 1."""
    path = tmp_path / "q.jsonl"
    path.write_text(
        "".join(
            f'{{"signal_type": "pdq", "signal_value": "{h}", "quality": {q}}}\n'
            for h, q in zip(H, ["true", "1.9", "80.0", "80"], strict=False)
        )
    )
    report = _ingest(engine, path)
    assert (report.added, report.rejected) == (2, 2)
    assert [r.line for r in report.rejections] == [1, 2]
    assert all("quality must be an integer" in r.reason for r in report.rejections)


@pytest.mark.parametrize(
    "header", ["signal_type,signal_value,signal_value", "signal_type,signal_value,tags,tags"]
)
def test_a_column_named_twice_is_refused(engine, tmp_path, header):
    path = tmp_path / "twice.csv"
    path.write_text(f"{header}\npdq,{H[0]},{H[1]},x\n")
    with pytest.raises(InvalidInput, match="more than once"):
        _ingest(engine, path)


def test_an_empty_type_says_missing_and_video_md5_is_md5(engine, tmp_path):
    path = tmp_path / "t.csv"
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    path.write_text(f"signal_type,signal_value\n,{H[0]}\nvideo_md5,{md5}\n")
    report = _ingest(engine, path)
    assert report.added == 1 and report.rejections[0].line == 2
    assert "missing signal type" in report.rejections[0].reason
    (stored,) = engine.store.signals(list_name="p")
    assert (stored.signal_type, stored.hash_hex) == ("md5", md5)


def test_ingest_calls_a_list_new_only_once_something_was_stored_in_it(run, tmp_path):
    """It said "list 'x' is new" before reading the file, then refused it whole: no list."""
    bad = tmp_path / "bad.csv"
    bad.write_text(f"signal_type,signal_value\npdq,{H[0]}\npdq,zz\n")
    refused = run("ingest", str(bad), "--list", "fresh", "--strict", ok=False)
    assert "REFUSED (strict)" in refused.stdout and "is new" not in refused.stderr
    worthless = tmp_path / "worthless.csv"
    worthless.write_text("signal_type,signal_value\npdq,zz\n")
    rejected = run("ingest", str(worthless), "--list", "fresh", ok=False)
    assert "rejected 1" in rejected.stdout and "is new" not in rejected.stderr
    assert "fresh" not in run("lists", "ls").output
    good = tmp_path / "good.csv"
    good.write_text(f"signal_type,signal_value\npdq,{H[0]}\n")
    stored = run("ingest", str(worthless), str(good), str(good), "--list", "fresh", ok=False)
    assert stored.stderr.count("list 'fresh' is new: created by this ingest") == 1
    assert stored.stderr.index("is new") > stored.stderr.index("line 2")  # after the 1st


def test_tenant_and_list_names_are_stripped_everywhere(run):
    run("lists", "create", "partner")
    run("tenants", "create", " acme ")
    out = run("tenants", "grant", " acme ", " partner ").output
    assert "it now reads 1 list(s)" in out
    assert "revoked" in run("tenants", "revoke", "acme ", "partner").output
    bad = run("lists", "create", "x" * 5000, ok=False)
    assert "names are 1-200 characters" in bad.output and len(bad.output) < 400


def test_ingest_says_what_it_creates_and_warns_of_a_disabled_list(run, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(f"signal_type,signal_value\npdq,{H[0]}\n")
    first = run("ingest", str(path), "--list", "parnter-a")  # a typo'd list name
    assert "created a new store in" in first.stderr
    assert "list 'parnter-a' is new" in first.stderr
    run("lists", "disable", "parnter-a")
    again = run("ingest", str(path), "--list", "parnter-a")
    assert "created" not in again.stderr and "is new" not in again.stderr
    assert "list 'parnter-a' is disabled" in again.stderr


def test_an_ingest_that_stores_nothing_creates_no_list(run, tmp_path):
    """'the first signal stored creates it': a wrong header or a file of bad lines left
    an empty list behind (created before the file was read), which `lists ls` showed."""
    header = tmp_path / "header.csv"
    header.write_text(f"signal_type,signal\npdq,{H[0]}\n")
    refused = run("ingest", str(header), "--list", "partner-a", ok=False)
    assert "lacks column(s) signal_value" in refused.output
    bad_lines = tmp_path / "bad.csv"
    bad_lines.write_text("signal_type,signal_value\npdq,nothex\n")
    run("ingest", str(bad_lines), "--list", "partner-a", ok=False)
    run("ingest", str(bad_lines), "--list", "partner-a", "--strict", ok=False)
    assert "0 list(s)" in run("lists", "ls").output
    assert "list.create" not in run("audit").output
    good = tmp_path / "good.csv"
    good.write_text(f"signal_type,signal_value\npdq,nothex\npdq,{H[0]}\n")
    run("ingest", str(good), "--list", "partner-a", ok=False)  # one bad line: exit 1
    listed = run("lists", "ls").output
    assert "partner-a" in listed and "1 list(s), 1 live signal(s)" in listed


def test_audit_shows_details_and_json(run, tmp_path):
    run("lists", "create", "partner")
    run("tenants", "create", "acme")
    run("tenants", "grant", "acme", "partner", "--write")
    out = run("audit", "--action", "tenant.grant").output
    assert '"tenant":"acme"' in out and '"write":true' in out
    (entry,) = json.loads(run("audit", "--action", "tenant.grant", "--json").output)
    assert entry["details"] == {"tenant": "acme", "write": True}
    assert entry["list_name"] == "partner"


def test_a_bad_byte_deep_in_a_file_says_what_was_stored_before_it(engine, tmp_path):
    """Before: "not UTF-8 text" alone, while thousands of signals were already stored."""
    rows = "".join(f"pdq,{i:064x}\n" for i in range(1, 5001)).encode()
    cut = rows.index(f"pdq,{4500:064x}".encode())
    path = tmp_path / "latin.csv"
    path.write_bytes(b"signal_type,signal_value\n" + rows[:cut] + b"pdq,caf\xe9\n" + rows[cut:])
    stored_before = r"not UTF-8 text.*batch\(es\) were stored: added"
    with pytest.raises(InvalidInput, match=stored_before) as err:
        engine.ingest(read_records(path), source=str(path), list_name="p", batch_size=100)
    stored = engine.store.lists()[0].signal_count
    assert stored > 0 and f"added {stored}," in str(err.value)


def test_lists_of_an_unknown_tenant_is_an_error_not_an_empty_answer(run):
    run("lists", "create", "partner")
    result = run("lists", "ls", "--tenant", "ghost", ok=False)
    assert result.exit_code == 1 and "no tenant named 'ghost'" in result.output


def test_a_huge_json_integer_expiry_is_a_bad_time_not_a_crash(engine, tmp_path):
    with pytest.raises(InvalidInput, match="not a time"):
        parse_time(10**400)
    path = tmp_path / "big.jsonl"
    path.write_text(
        f'{{"signal_type": "pdq", "signal_value": "{H[0]}", "expires_at": 1{"0" * 400}}}\n'
    )
    report = _ingest(engine, path)
    assert report.rejected == 1 and report.rejections[0].line == 1


def test_reading_stdin_leaves_it_open_and_accepts_a_text_stdin(monkeypatch):
    import io

    text = f"signal_type,signal_value\npdq,{H[0]}\n"
    raw = io.BytesIO(text.encode())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
    assert len(list(read_records("-"))) == 1
    assert not raw.closed  # the wrapper around stdin's bytes was detached, not closed
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))  # no .buffer at all
    assert len(list(read_records("-"))) == 1


@pytest.mark.parametrize("batch_size", [2, 50_000])
def test_a_multi_line_record_is_named_by_its_first_line(engine, tmp_path, batch_size):
    """Before: a quoted label spanning lines 3-5 was reported at line 5."""
    path = tmp_path / "ml.csv"
    path.write_text(
        "signal_type,signal_value,labels\n"
        f'pdq,{H[0]},"a"\npdq,zz,"line one\nline two\nline three"\npdq,{H[1]},b\npdq,yy,c\n'
    )
    report = _ingest(engine, path, batch_size=batch_size)
    assert report.added == 2 and [r.line for r in report.rejections] == [3, 7]


def test_audit_with_an_action_never_logged_names_the_logged_ones(run):
    run("lists", "create", "partner")
    result = run("audit", "--action", "retrakt")
    assert "no entries with action 'retrakt'; actions logged: list.create" in result.stderr


def test_the_documented_downgrade_works_and_the_upgrade_is_logged(tmp_path, caplog):
    """README, Upgrading: the SQL that takes a store back to schema 4, 3 and then 2, and the
    warning the next open logs when it upgrades again (older builds then refuse the store)."""
    path = tmp_path / "data" / "store.sqlite"
    store = SignalStore(path)
    store.create_list("a")
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "BEGIN IMMEDIATE; ALTER TABLE mirrors DROP COLUMN entry_digest; ALTER TABLE mirrors"
        " DROP COLUMN signal_id; DELETE FROM schema_version WHERE version = 5; COMMIT;"
    )
    conn.executescript(
        "BEGIN IMMEDIATE; DROP TABLE mirror_signals; DROP TABLE mirror_lists; DROP TABLE"
        " mirrors; DELETE FROM schema_version WHERE version = 4; COMMIT;"
    )
    conn.executescript(
        "BEGIN IMMEDIATE; DROP INDEX signals_expiry;"
        " DELETE FROM schema_version WHERE version = 3; COMMIT;"
    )
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with caplog.at_level("WARNING"):
        store = SignalStore(path)
    assert "store schema upgraded 2 -> 5" in caplog.text
    versions = [v for (v,) in store.conn().execute("SELECT version FROM schema_version")]
    assert versions == [1, 2, 3, 4, 5] and [h.name for h in store.lists()] == ["a"]
    store.close()
