"""``hashmatch backup``: an online copy of the store, taken while a real server ingests and
matches over a real socket, is one consistent, checked file (every batch whole or
absent, the copy's change counter matching its contents) that a restored data dir
serves from. Bad destinations are refused and leave the store untouched."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine.backup import BackupFailed, backup_path, backup_store
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli
from hashmatch.server.client import signal
from hashmatch.server.testing import running_server

HASHMATCH = [sys.executable, "-m", "hashmatch.server.cli"]
BATCH = 50


def _batch_codes(batch: int) -> list[str]:
    rng = np.random.default_rng(1000 + batch)
    return [c.tobytes().hex() for c in rng.integers(0, 256, (BATCH, 32), dtype=np.uint8)]


def _code(hex_: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_), np.uint8)


def _batches_in(copy: Path) -> dict[int, int]:
    """external id "b<batch>-<i>" -> signals per batch in a backup file."""
    with sqlite3.connect(copy) as conn:
        rows = conn.execute("SELECT external_id FROM signals").fetchall()
    counts: dict[int, int] = {}
    for (ext,) in rows:
        batch = int(ext[1:].split("-")[0])
        counts[batch] = counts.get(batch, 0) + 1
    return counts


def test_a_backup_taken_while_the_server_ingests_is_whole_and_restores(tmp_path):
    served = tmp_path / "served"
    backups = tmp_path / "backups"
    backups.mkdir()
    stop = threading.Event()
    acked: list[int] = []  # batches whose ingest call returned
    with running_server(served) as ts:
        client = ts.client(timeout=30)

        def ingest() -> None:
            batch = 0
            while not stop.is_set():
                items = [signal("pdq", h, external_id=f"b{batch}-{i}")
                         for i, h in enumerate(_batch_codes(batch))]  # fmt: skip
                assert client.ingest("live", items, batch_size=BATCH).added == BATCH
                acked.append(batch)
                batch += 1

        writer = threading.Thread(target=ingest)
        writer.start()
        try:
            while len(acked) < 5:
                stop.wait(0.01)
            copies = []
            for n in range(3):  # real CLI processes, beside the serving server
                before = len(acked)
                dest = backups / f"b{n}.sqlite"
                done = subprocess.run([*HASHMATCH, "backup", str(dest), "--data-dir", str(served)],
                                      capture_output=True, text=True, timeout=60)  # fmt: skip
                assert done.returncode == 0, done.stderr
                assert done.stdout.startswith(f"backup written: {dest} (")
                copies.append((dest, before))
                assert client.match([("pdq", _batch_codes(0)[0])]).results[0].matches
        finally:
            stop.set()
            writer.join()
        store_id = ts.engine.store.store_id()

    for dest, before in copies:
        with sqlite3.connect(dest) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file
            counter = conn.execute("SELECT MAX(seq) FROM changes").fetchone()[0]
            logged = conn.execute("SELECT COUNT(*) FROM changes WHERE op = 'add'").fetchone()[0]
        counts = _batches_in(dest)
        assert set(counts.values()) == {BATCH}  # no torn batch
        assert sorted(counts) == list(range(len(counts)))  # a prefix of the ingests
        assert len(counts) >= before  # everything acknowledged before the backup began
        assert logged == len(counts) and counter >= logged  # the log agrees with the rows
        assert not Path(f"{dest}-wal").exists() and not Path(f"{dest}-shm").exists()

    # restore the last copy into a fresh data dir: it serves exactly its batches
    dest, _ = copies[-1]
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(dest, restored / "store.sqlite")
    kept = len(_batches_in(dest))
    with Engine.open(restored) as engine:
        assert engine.store.store_id() == store_id  # a copy of that store, not a new one
        assert engine.stats()["total_signals"] == kept * BATCH
        (found,) = engine.match("pdq", _code(_batch_codes(kept - 1)[7]), threshold=0)
        assert [m.external_id for m in found] == [f"b{kept - 1}-7"]
        if kept < len(acked):  # written after the backup: not in it
            (missing,) = engine.match("pdq", _code(_batch_codes(kept)[0]), threshold=0)
            assert missing == []
    with Engine.open(served, eager=False) as engine:
        entry = engine.store.audit(action="store.backup", limit=1)[0]
    assert entry.source == str(dest) and entry.details["change_counter"] >= 1


def test_bad_destinations_are_refused_and_the_store_is_untouched(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as engine:
        engine.ingest([SignalRecord("pdq", "ab" * 32)], list_name="l")
    before = (data / "store.sqlite").read_bytes()
    existing = tmp_path / "old.sqlite"
    existing.write_bytes(b"an earlier backup")

    def run(dest: Path):
        return CliRunner().invoke(cli, ["backup", str(dest), "--data-dir", str(data)])

    result = run(existing)
    assert result.exit_code == 1 and "exists: a backup never overwrites a file" in result.output
    assert existing.read_bytes() == b"an earlier backup"
    result = run(tmp_path / "no-such-dir" / "x.sqlite")
    assert result.exit_code == 1 and "no-such-dir is not a directory" in result.output
    # a trailing slash names a directory: a missing one is refused, not made a file
    nightly = f"{tmp_path / 'nightly'}/"
    result = CliRunner().invoke(cli, ["backup", nightly, "--data-dir", str(data)])
    assert result.exit_code == 1 and "nightly/ is not a directory" in result.output
    assert not (tmp_path / "nightly").exists()
    result = run(data / "store.sqlite")
    assert result.exit_code == 1 and "exists" in result.output
    result = CliRunner().invoke(cli, ["backup", str(tmp_path / "x"), "--data-dir",
                                      str(tmp_path / "missing")])  # fmt: skip
    assert result.exit_code == 1 and not (tmp_path / "x").exists()
    assert (data / "store.sqlite").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "old.sqlite"]  # no temp left

    # a directory gets a timestamped file, and two backups a second apart do not collide
    out = tmp_path / "daily"
    out.mkdir()
    assert backup_path(out, now=0).name == "store-19700101T000000Z.sqlite"
    result = run(out)
    assert result.exit_code == 0, result.output
    (made,) = out.iterdir()
    assert made.name.startswith("store-") and made.suffix == ".sqlite"


def test_a_backup_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    """A failure after the copy began (here: the check) removes the partial file."""
    data = tmp_path / "d"
    with Engine.open(data) as engine:
        engine.ingest([SignalRecord("pdq", "cd" * 32)], list_name="l")
        import hashmatch.engine.backup as backup_module

        def broken_check(*args, **kwargs):
            raise BackupFailed("the copy failed its check (page 3); nothing was written")

        monkeypatch.setattr(backup_module, "store_id", broken_check)
        with pytest.raises(BackupFailed, match="failed its check"):
            backup_store(engine.store, tmp_path / "b.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


BACKUP_CHILD = """
import sys
from hashmatch.engine.backup import backup_store
from hashmatch.engine.store import SignalStore
store = SignalStore(sys.argv[1], create=False)
backup_store(store, sys.argv[2])
print("DONE", flush=True)
"""


def _begun(path: Path) -> bool:
    """Whether ``path`` is a backup's copy in progress that holds SQLite's header."""
    try:
        if not path.name.endswith(".tmp"):
            return False
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\0"
    except OSError:  # renamed or removed meanwhile
        return False


def _kill_mid_backup(store: Path, dest: Path) -> list[str]:
    """Run a backup in a real subprocess and SIGKILL it once its copy has begun (the
    SQLite header written: killed between creating the file and writing it, the copy is
    not yet a database, which the next backup rightly leaves alone); return the names
    it left in ``dest``."""
    import os
    import signal as signals
    import time

    child = subprocess.Popen([sys.executable, "-c", BACKUP_CHILD, str(store), str(dest)],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 20
    try:
        while not any(_begun(p) for p in dest.iterdir()):
            assert child.poll() is None, "the backup finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.kill(child.pid, signals.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()  # else a ResourceWarning under -W error::ResourceWarning
    assert child.returncode == -signals.SIGKILL
    return sorted(p.name for p in dest.iterdir())


def test_a_backup_killed_midway_leaves_a_copy_the_next_backup_removes(tmp_path):
    """kill -9 mid-copy (a cron line under ``timeout -s KILL``, an OOM kill) leaves a
    hidden full-size partial copy; the next backup into the directory removes it, so
    repeated kills do not fill the backup disk. A copy still being written is kept."""
    data = tmp_path / "data"
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (200_000, 32), dtype=np.uint8)
    with Engine.open(data, eager=False) as engine:  # ~25 MB: the copy takes a while
        recs = (SignalRecord("pdq", c.tobytes().hex()) for c in codes)
        engine.ingest(recs, list_name="l", batch_size=50_000)
    backups = tmp_path / "backups"
    backups.mkdir()
    left = _kill_mid_backup(data / "store.sqlite", backups)
    assert left and all(n.startswith(".store-") and ".tmp" in n for n in left)
    # a copy in progress (its lock held) is kept, even when its pid is not one we can see
    # (another pid namespace): here the pid of a process that has ended
    import fcntl

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    busy = backups / f".store-20261206T000000Z.sqlite.{gone}.tmp"
    busy.write_bytes(b"SQLite format 3\0")
    other = backups / f".notes.sqlite.{gone}.tmp"  # not a name a backup gives
    other.write_bytes(b"SQLite format 3\0")
    with open(busy) as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with Engine.open(data, eager=False) as engine:
            report = backup_store(engine.store, backups)
        names = sorted(p.name for p in backups.iterdir())
    assert names == sorted([busy.name, other.name, report.path.name])
    with sqlite3.connect(report.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM signals").fetchone()[0] == len(codes)
