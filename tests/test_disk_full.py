"""An operator's bad day with disk space: a full disk or a file-size limit gives one
clear line (never a traceback), keeps what was stored and the previous snapshot, and
the next run after space is freed works without manual repair.

A full disk is a real small tmpfs (mounting needs root: those tests skip without it);
the file-size limit (`prlimit --fsize`) works for anyone.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine.errors import SnapshotFailed
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli

HASHMATCH = [sys.executable, "-m", "hashmatch.server.cli"]


def _records(n: int, seed: int = 3) -> list[SignalRecord]:
    codes = np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)
    return [SignalRecord("pdq", c.tobytes().hex()) for c in codes]


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MB tmpfs at tmp_path/mnt (skips where mounting is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int = 0) -> Path:
    """Fill the filesystem up to ``leave`` bytes free; the filler file is returned."""
    filler = mnt / "filler"
    with open(filler, "wb") as out:
        while (free := os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize) > leave:
            try:
                out.write(b"\0" * max(min(free - leave, 1 << 20), 4096))
                out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_snapshot_on_a_full_disk_fails_clearly_and_keeps_the_previous_one(small_fs):
    data = small_fs / "d"
    records = _records(50_000)
    with Engine.open(data) as engine:
        engine.ingest(records, list_name="l")
        first = engine.snapshot()
        engine.ingest(_records(20_000, seed=4), list_name="l")
        filler = _fill(small_fs, leave=64 << 10)
        with pytest.raises(SnapshotFailed, match="the disk is full") as err:
            engine.snapshot()
        assert err.value.disk_full
        assert "the previous snapshot is kept" in str(err.value)
        assert [p.name for p in (data / "snapshots").iterdir()] == [first.name]  # no temp
        assert engine.match_hex("pdq", [records[7].hash_hex])[0][0].distance == 0
        filler.unlink()
        assert engine.snapshot().exists()
    with Engine.open(data) as engine:  # the new snapshot loads, the later rows with it
        assert engine.load_info["source"] == "snapshot"
        assert engine.store.count_live()["pdq"] == 70_000


def test_verbs_on_a_full_disk_say_so_and_work_once_space_is_freed(small_fs):
    data = str(small_fs / "d")
    csv = small_fs / "in.csv"
    csv.write_text("signal_type,signal_value\n" + "".join(
        f"pdq,{r.hash_hex}\n" for r in _records(20_000)))  # fmt: skip
    filler = _fill(small_fs, leave=8 << 10)
    made = _cli("lists", "create", "l", "--data-dir", data)  # a new store: cannot be made
    assert made.exit_code == 1 and "Traceback" not in made.output
    assert "full" in made.output, made.output
    assert "batches committed" not in made.output  # only ingest commits in batches
    filler.unlink()
    assert _cli("lists", "create", "l", "--data-dir", data).exit_code == 0  # nothing to repair

    filler = _fill(small_fs, leave=256 << 10)
    ingested = _cli("ingest", str(csv), "--list", "l", "--batch-size", "2000", "--data-dir", data)
    assert ingested.exit_code == 1 and "Traceback" not in ingested.output
    assert "the disk is full: free space and re-run" in ingested.output, ingested.output
    assert "batches committed before this are stored" in ingested.output
    filler.unlink()
    again = _cli("ingest", str(csv), "--list", "l", "--data-dir", data)
    assert again.exit_code == 0, again.output
    assert "rejected 0" in again.output
    with Engine.open(data) as engine:
        assert engine.store.count_live()["pdq"] == 20_000
        assert engine.store.integrity_check() == "ok"


def test_a_snapshot_over_the_file_size_limit_is_one_line_and_loses_nothing(tmp_path):
    """No root needed: `prlimit --fsize` makes the snapshot's index file too large."""
    data = tmp_path / "d"
    with Engine.open(data) as engine:
        engine.ingest(_records(30_000), list_name="l")
        first = engine.snapshot()
    done = subprocess.run(
        ["prlimit", "--fsize=400000", "--", *HASHMATCH, "index", "snapshot", "--data-dir",
         str(data)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot write a snapshot in {data / 'snapshots'}: " in done.stderr
    assert "over the file-size limit of 400,000 bytes: ulimit -f" in done.stderr
    assert "the previous snapshot is kept" in done.stderr
    assert [p.name for p in (data / "snapshots").iterdir()] == [first.name]
    with Engine.open(data) as engine:
        assert engine.load_info["source"] == "snapshot"


def test_a_rescan_with_its_catalog_on_a_full_disk_is_one_line(small_fs, tmp_path):
    from PIL import Image

    tree = tmp_path / "tree"
    tree.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((128, 128)).save(tree / f"{i}.png")
    data, catalog = tmp_path / "d", small_fs / "cat.sqlite"
    with Engine.open(data) as engine:
        engine.store.create_list("l")
    scanned = subprocess.run(
        [*HASHMATCH, "scan", str(tree), "--data-dir", str(data), "--catalog", str(catalog),
         "--workers", "1", "--no-progress", "--out", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert scanned.returncode == 0, scanned.stderr
    with Engine.open(data) as engine:  # a new signal: one catalogued file's PDQ
        found = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
        assert found["hashed"] == 4
        engine.ingest(_records(10), list_name="l")
    filler = _fill(small_fs, leave=8 << 10)
    rescan = [*HASHMATCH, "rescan", "--data-dir", str(data), "--catalog", str(catalog),
              "--out", str(tmp_path / "rs.jsonl")]  # fmt: skip
    done = subprocess.run(rescan, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"catalog {catalog}: " in done.stderr
    assert "the disk is full: free space and re-run" in done.stderr
    filler.unlink()
    done = subprocess.run(rescan, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_scan_over_the_open_file_limit_says_which_limit(tmp_path):
    from PIL import Image

    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(40):
        Image.new("RGB", (64, 64), (i * 5, 90, 200)).save(tree / f"{i}.png")
    done = subprocess.run(
        ["prlimit", "--nofile=20", "--", *HASHMATCH, "scan", str(tree), "--no-match",
         "--catalog", str(tmp_path / "c.sqlite"), "--workers", "2", "--no-progress",
         "--out", str(tmp_path / "r.jsonl")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode == 0:
        pytest.skip("20 open files were enough here")
    assert "open-file limit 20: raise ulimit -n, or use fewer --workers" in done.stderr


@pytest.mark.parametrize(
    "make",
    [
        lambda: OSError(errno.ENOSPC, "No space left on device"),
        lambda: OSError(errno.EDQUOT, "Disk quota exceeded"),
        lambda: _sqlite_full(),
        lambda: SnapshotFailed("cannot write a snapshot in /x: the disk is full", disk_full=True),
        lambda: _raised_from(RuntimeError("wrapped"), OSError(errno.ENOSPC, "full")),
    ],
)
def test_every_kind_of_full_disk_maps_to_resource_exhausted_saying_so(make):
    """No root needed: the mapping itself, for each error a full disk raises."""
    import grpc

    from hashmatch.engine.errors import is_disk_full
    from hashmatch.server.errors import to_status

    exc = make()
    assert is_disk_full(exc)
    code, message, _ = to_status(exc)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "full" in message and "internal error" not in message


def test_other_os_errors_are_not_called_a_full_disk():
    from hashmatch.engine.errors import is_disk_full

    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(SnapshotFailed("cannot write a snapshot: I/O error"))


def _sqlite_full():
    import sqlite3

    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL
    return exc


def _raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        raise outer from cause
    except RuntimeError as exc:  # only to attach the cause
        return exc


def test_an_export_to_a_non_utf8_stdout_is_still_utf8(tmp_path):
    """Ingest reads UTF-8; a C/latin-1 locale must not mangle (or crash on) a label."""
    data = tmp_path / "d"
    with Engine.open(data) as engine:
        engine.ingest([SignalRecord("pdq", "0f" * 32, labels=("é-ünïcode",))], list_name="l")
    done = subprocess.run(
        [*HASHMATCH, "lists", "export", "l", "--data-dir", str(data)],
        capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "latin-1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.decode("utf-8"))["labels"] == ["é-ünïcode"]


def test_a_backup_onto_a_full_disk_fails_clearly_and_leaves_nothing(small_fs, tmp_path):
    data = tmp_path / "d"  # the store is elsewhere; the backup's disk fills
    with Engine.open(data) as engine:
        engine.ingest(_records(100_000), list_name="l")  # ~20 MB of store
    _fill(small_fs, leave=4 << 20)
    result = _cli("backup", str(small_fs / "b.sqlite"), "--data-dir", str(data))
    assert result.exit_code == 1
    assert f"cannot write a backup to {small_fs / 'b.sqlite'}: the disk is full" in result.output
    assert "nothing was left there and the store is unaffected" in result.output
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]  # no partial copy
    (small_fs / "filler").unlink()
    result = _cli("backup", str(small_fs / "b.sqlite"), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
