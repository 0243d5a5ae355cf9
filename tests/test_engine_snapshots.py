"""The engine's index snapshots through their lifecycle: which snapshot a start may
load (this store's history only, complete, well-formed), what snapshotting keeps and
removes, and the store files a start must refuse. Real stores, real snapshot files,
real processes and a real server; nothing is mocked."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine.errors import CorruptData
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.testing import running_server


def codes(n: int, seed: int = 0, nbytes: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, nbytes), dtype=np.uint8)


def records(c: np.ndarray, signal_type: str = "pdq") -> list[SignalRecord]:
    return [SignalRecord(signal_type, row.tobytes().hex(), line=i + 1) for i, row in enumerate(c)]


def found(engine: Engine, c: np.ndarray, signal_type: str = "pdq") -> int:
    """How many of the codes match themselves (distance 0)."""
    return sum(bool(m) for m in engine.match(signal_type, c, threshold=0))


def backup(data: Path, to: Path) -> None:
    """What an operator does: SQLite's online backup of the store file."""
    src, dst = sqlite3.connect(data / "store.sqlite"), sqlite3.connect(to)
    src.backup(dst)
    src.close()
    dst.close()


def restore(data: Path, backup_file: Path) -> None:
    """Put the backup back (snapshots/ left as it is, as operators do)."""
    for suffix in ("", "-wal", "-shm"):
        (data / f"store.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(backup_file, data / "store.sqlite")


def snapshot_dirs(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "snapshots").iterdir())


# ---------------------------------------------------------------- whose history


def test_snapshot_taken_before_a_restore_is_refused_once_the_counter_fits(tmp_path):
    data, saved = tmp_path / "d", tmp_path / "backup.sqlite"
    a, b, c = codes(10, 1), codes(10, 2), codes(10, 3)
    with Engine.open(data) as e:
        e.ingest(records(a), list_name="l")  # change 1
        backup(data, saved)
        e.ingest(records(b), list_name="l")  # change 2: ids 11..20
        e.snapshot()  # holds a + b
    restore(data, saved)
    with Engine.open(data, eager=False) as e:
        # change 2 again: the same op, type and id range 11..20, but other codes
        e.ingest(records(c), list_name="l")
    with Engine.open(data) as e:
        assert e.load_info["source"] == "store"
        (why,) = e.load_info["skipped_snapshots"]
        assert "restored from a backup" in why
        assert found(e, c) == 10 and found(e, b) == 0 and found(e, a) == 10
        assert e.verify_index()["ok"]


def test_snapshot_after_the_backup_point_still_loads_after_a_restore(tmp_path):
    """A backup taken after the snapshot shares its history: the snapshot is good."""
    data, saved = tmp_path / "d", tmp_path / "backup.sqlite"
    with Engine.open(data) as e:
        e.ingest(records(codes(10, 1)), list_name="l")
        e.snapshot()
        e.ingest(records(codes(10, 2)), list_name="l")
        backup(data, saved)
        e.ingest(records(codes(10, 3)), list_name="l")
    restore(data, saved)
    with Engine.open(data) as e:
        assert e.load_info["source"] == "snapshot" and e.load_info["replayed_changes"] == 1
        assert found(e, codes(10, 2)) == 10 and found(e, codes(10, 3)) == 0


def test_snapshot_copied_from_another_data_dir_is_refused(tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        with Engine.open(tmp_path / name) as e:
            e.ingest(records(codes(50, seed)), list_name="l")
            if name == "a":
                e.snapshot()
    shutil.copytree(tmp_path / "a" / "snapshots", tmp_path / "b" / "snapshots")
    with Engine.open(tmp_path / "b") as e:
        assert e.load_info["source"] == "store"
        assert "taken of another store" in e.load_info["skipped_snapshots"][0]
        assert found(e, codes(50, 2)) == 50 and found(e, codes(50, 1)) == 0


def test_a_format_1_snapshot_is_not_loaded_but_built_from_the_store(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        snap = e.snapshot()
    manifest = json.loads((snap / "manifest.json").read_text())
    manifest["format"] = 1
    del manifest["store_id"], manifest["change_digest"]
    (snap / "manifest.json").write_text(json.dumps(manifest))
    with Engine.open(data) as e:
        assert e.load_info["source"] == "store"
        assert "format 1" in e.load_info["skipped_snapshots"][0]
        assert found(e, codes(10)) == 10
        again = e.snapshot()
    with Engine.open(data) as e:  # the next snapshot is a checkable one
        assert e.load_info == {**e.load_info, "source": "snapshot", "snapshot": again.name}


def test_every_store_gets_one_id_that_backups_share(tmp_path):
    from hashmatch.engine.store_schema import store_id

    with Engine.open(tmp_path / "a") as a, Engine.open(tmp_path / "b") as b:
        first = store_id(a.store.conn())
        assert len(first) == 32 and first != store_id(b.store.conn())
        backup(tmp_path / "a", tmp_path / "copy.sqlite")
    with Engine.open(tmp_path / "a") as a:
        assert store_id(a.store.conn()) == first
    assert store_id(sqlite3.connect(tmp_path / "copy.sqlite")) == first


# ---------------------------------------------------------------- what snapshot keeps


def test_snapshot_keeps_the_one_it_wrote_and_drops_those_ahead_of_the_store(tmp_path):
    data, saved = tmp_path / "d", tmp_path / "backup.sqlite"
    with Engine.open(data) as e:
        e.ingest(records(codes(20)), list_name="l")
        backup(data, saved)
        e.retract(list_name="l", signal_ids=[1, 2])
        e.snapshot()
        e.snapshot()  # two snapshots at change 2
    restore(data, saved)  # change 1
    with Engine.open(data) as e:
        path = e.snapshot()
        assert path.is_dir() and snapshot_dirs(data) == [path.name]
    with Engine.open(data) as e:
        assert e.load_info["source"] == "snapshot" and e.load_info["snapshot"] == path.name
        assert found(e, codes(20)[:2]) == 2


def test_snapshot_keeps_the_two_newest(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        written = []
        for seed in range(3):
            e.ingest(records(codes(5, seed)), list_name="l")
            written.append(e.snapshot().name)
    assert snapshot_dirs(data) == sorted(written[1:])


# ---------------------------------------------------------------- damaged manifests


MALFORMED = [
    "[1]",
    "null",
    '{"format": 2, "types": {}}',
    "FIX",  # a real manifest with "types": []
    "FIX_COUNT",  # a real manifest with the change counter a string
    "FIX_FILE",  # a real manifest whose file leaves the snapshot directory
]


def _damage(manifest_path: Path, how: str) -> None:
    real = json.loads(manifest_path.read_text())
    if how == "FIX":
        real["types"] = []
    elif how == "FIX_COUNT":
        real["change_counter"] = "1"
    elif how == "FIX_FILE":
        real["types"]["pdq"]["file"] = "../../store.sqlite"
    else:
        manifest_path.write_text(how)
        return
    manifest_path.write_text(json.dumps(real))


@pytest.mark.parametrize("how", MALFORMED)
def test_malformed_manifest_is_skipped_and_the_store_used(tmp_path, how):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        snap = e.snapshot()
    _damage(snap / "manifest.json", how)
    with Engine.open(data) as e:
        assert e.load_info["source"] == "store"
        assert e.load_info["skipped_snapshots"][0].startswith(snap.name + ": ")
        assert found(e, codes(10)) == 10


def test_server_serves_past_a_malformed_manifest_and_logs_it(tmp_path, caplog):
    data = tmp_path / "d"
    c = codes(10)
    with Engine.open(data) as e:
        e.ingest(records(c), list_name="l")
        snap = e.snapshot()
    (snap / "manifest.json").write_text("[1]")
    with caplog.at_level(logging.WARNING, logger="hashmatch.server"), running_server(data) as ts:
        client = ts.client()
        assert client.health() == "SERVING"
        assert client.match([("pdq", c[3].tobytes().hex())]).results[0].matches
    skipped = [r.getMessage() for r in caplog.records if "snapshot skipped" in r.getMessage()]
    assert skipped == [
        f"index snapshot skipped: {snap.name}: manifest: must be a JSON object, got list"
    ]


def test_cli_index_verify_and_stats_print_skipped_snapshots(tmp_path):
    from hashmatch.server.cli import cli

    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        snap = e.snapshot()
    (snap / "manifest.json").write_text("null")
    env = {"HASHMATCH_DATA_DIR": str(data)}
    for verb in ("verify", "stats"):
        result = CliRunner().invoke(cli, ["index", verb], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert f"skipped snapshot {snap.name}: manifest: must be a JSON object" in result.output


# ---------------------------------------------------------------- missing or swapped types


def _two_types(data: Path, second: str, nbytes: int) -> Path:
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        e.ingest(records(codes(10, 5, nbytes), second), list_name="l")
        return e.snapshot()


def test_snapshot_without_a_type_the_store_has_is_refused(tmp_path):
    data = tmp_path / "d"
    snap = _two_types(data, "md5", 16)
    manifest = json.loads((snap / "manifest.json").read_text())
    del manifest["types"]["md5"]
    (snap / "manifest.json").write_text(json.dumps(manifest))
    with Engine.open(data) as e:
        assert e.load_info["source"] == "store"
        assert "no index of md5" in e.load_info["skipped_snapshots"][0]
        assert found(e, codes(10, 5, 16), "md5") == 10


def test_snapshot_without_a_type_added_after_it_loads(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        e.snapshot()
        e.ingest(records(codes(10, 5, 16), "md5"), list_name="l")
    with Engine.open(data) as e:
        assert e.load_info["source"] == "snapshot" and "skipped_snapshots" not in e.load_info
        assert found(e, codes(10, 5, 16), "md5") == 10


def test_snapshot_of_a_type_with_no_live_signal_loads_once_it_has_some_again(tmp_path):
    """Every md5 signal retracted, a start built from the store, then a snapshot: md5's
    index is empty, not absent, so the snapshot still loads after a restore."""
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        e.ingest(records(codes(3, 5, 16), "md5"), list_name="l")
        e.retract(list_name="l", hashes=[("md5", c.tobytes().hex()) for c in codes(3, 5, 16)])
    with Engine.open(data) as e:
        assert e.load_info["source"] == "store"
        e.snapshot()
        e.restore(list_name="l", hashes=[("md5", c.tobytes().hex()) for c in codes(3, 5, 16)])
    with Engine.open(data) as e:
        assert e.load_info["source"] == "snapshot" and "skipped_snapshots" not in e.load_info
        assert found(e, codes(3, 5, 16), "md5") == 3


@pytest.mark.parametrize(("second", "nbytes"), [("md5", 16), ("sha256", 32)])
def test_snapshot_with_two_types_files_swapped_is_refused(tmp_path, second, nbytes):
    data = tmp_path / "d"
    snap = _two_types(data, second, nbytes)
    manifest = json.loads((snap / "manifest.json").read_text())
    types = manifest["types"]
    types["pdq"]["file"], types[second]["file"] = types[second]["file"], types["pdq"]["file"]
    (snap / "manifest.json").write_text(json.dumps(manifest))  # counts are equal (10)
    with Engine.open(data) as e:
        assert e.load_info["source"] == "store"
        assert "expected" in e.load_info["skipped_snapshots"][0]
        assert found(e, codes(10)) == 10
        assert found(e, codes(10, 5, nbytes), second) == 10


# ---------------------------------------------------------------- the rescan cache


def test_corrupt_rescan_index_cache_is_rebuilt(tmp_path):
    from hashmatch.engine import signal_types
    from hashmatch.engine.catalog import Catalog, FileHashes
    from hashmatch.engine.rescan import catalog_index

    cat = Catalog(tmp_path / "catalog.sqlite")
    rng = np.random.default_rng(0)
    with cat.transaction():
        for i in range(50):
            code = rng.integers(0, 256, (1, 32), dtype=np.uint8)
            cat.put_hashed(f"/f{i}", size=1, mtime_ns=1, md5=None, types=["pdq"],
                           hashes=[FileHashes("pdq", code, [100])])  # fmt: skip
    st, cache = signal_types.get("pdq"), tmp_path / "cache"
    assert catalog_index(cat, st, 50, cache_dir=cache)[1:] == (50, 50)
    assert catalog_index(cat, st, 50, cache_dir=cache)[1:] == (50, 0)  # from the cache
    damaged = next((cache / "pdq.index").rglob("ids.npy"))
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 1
    damaged.write_bytes(raw)
    assert catalog_index(cat, st, 50, cache_dir=cache)[1:] == (50, 50)  # rebuilt
    assert catalog_index(cat, st, 50, cache_dir=cache)[1:] == (50, 0)  # and cached again
    (cache / "pdq.json").write_text("[1]")
    assert catalog_index(cat, st, 50, cache_dir=cache)[1:] == (50, 50)
    cat.close()


# ---------------------------------------------------------------- abandoned temporaries

# A snapshot killed (SIGKILL) after writing everything, just before the rename.
_DIE_BEFORE_RENAME = """
import os, signal, sys
from hashmatch.engine import runtime
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)
runtime.os.replace = die
runtime.Engine.open(sys.argv[1]).snapshot()
"""


def test_snapshot_killed_midway_leaves_no_tmp_after_the_next_start(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
    child = subprocess.Popen([sys.executable, "-c", _DIE_BEFORE_RENAME, str(data)])
    assert child.wait(60) == -signal.SIGKILL
    (left,) = snapshot_dirs(data)
    assert left.endswith(f".{child.pid}.tmp")
    old = data / "snapshots" / "snap-000000000001-1.tmp"  # an older hashmatch's name
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    hour_ago = time.time() - 3700
    for p in (old, old / "manifest.json"):
        os.utime(p, (hour_ago, hour_ago))
    with Engine.open(data) as e:
        assert snapshot_dirs(data) == []
        assert found(e, codes(10)) == 10


def test_tmp_of_a_live_snapshot_writer_is_left_alone(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = data / "snapshots" / f"snap-000000000001-1.{writer.pid}.tmp"
        busy.mkdir(parents=True)
        with Engine.open(data) as e:
            e.snapshot()
            assert busy.is_dir()
    finally:
        writer.kill()
        writer.wait()
    with Engine.open(data) as e:
        e.snapshot()
        assert not busy.exists()


def test_tmp_locked_by_its_writer_is_left_alone_whatever_its_pid(tmp_path):
    """A writer in another pid namespace (a container) has a pid we cannot see."""
    import fcntl

    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
    busy = data / "snapshots" / "snap-000000000001-1.999999999.tmp"  # no such pid here
    busy.mkdir(parents=True)
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with Engine.open(data) as e:
            e.snapshot()
            assert busy.is_dir()
    finally:
        os.close(fd)
    with Engine.open(data):
        assert not busy.exists()


# ---------------------------------------------------------------- lost or damaged stores


def test_zero_byte_store_is_refused_not_opened_empty(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
    os.truncate(data / "store.sqlite", 0)
    with pytest.raises(CorruptData, match=r"store\.sqlite is empty .*restore it from a backup"):
        Engine.open(data)


def test_missing_store_next_to_snapshots_is_refused(tmp_path):
    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        e.snapshot()
    (data / "store.sqlite").unlink()
    with pytest.raises(
        CorruptData, match=r"store\.sqlite is missing but .*restore it from a backup"
    ):
        Engine.open(data)
    assert not (data / "store.sqlite").exists()


@pytest.mark.parametrize("damage", ["not sqlite", "header"])
def test_damaged_store_is_corrupt_data_naming_the_file(tmp_path, damage):
    from hashmatch.server.cli import cli

    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
    path = data / "store.sqlite"
    raw = bytearray(path.read_bytes())
    if damage == "header":
        raw[:16] = b"X" * 16
    else:
        raw = bytearray(b"hello" * 100)
    path.write_bytes(raw)
    with pytest.raises(CorruptData, match=re.escape(f"{path} is damaged or not a hashmatch store")):
        Engine.open(data)
    result = CliRunner().invoke(cli, ["index", "stats", "--data-dir", str(data)])
    assert result.exit_code == 1 and "restore it from a backup" in result.output
    assert "Traceback" not in result.output


# An index file whose count disagrees with the manifest (an older snapshot's file copied
# in) must be skipped: loading it would serve a stale index with no error.
def test_snapshot_holding_an_older_index_file_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (10, 32), dtype=np.uint8) for _ in range(2))

    def recs(codes):
        return [SignalRecord("pdq", r.tobytes().hex(), line=i + 1) for i, r in enumerate(codes)]

    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(recs(a), list_name="l")
        shutil.copytree(e.snapshot() / "pdq.index", tmp_path / "old.index")
        e.ingest(recs(b), list_name="l")
        new = e.snapshot()
    shutil.rmtree(new / "pdq.index")
    shutil.copytree(tmp_path / "old.index", new / "pdq.index")
    with Engine.open(data) as e:
        assert any("manifest says 20" in s for s in e.load_info["skipped_snapshots"])
        assert all(e.match("pdq", b, threshold=0))


_PRUNE_LOOP = """
import sys
import numpy as np
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
engine = Engine.open(sys.argv[1])
for i in range(200):  # each snapshot past the second prunes the oldest
    code = np.random.default_rng(i).integers(0, 256, 32, dtype=np.uint8)
    engine.ingest([SignalRecord("pdq", code.tobytes().hex())], list_name="more")
    engine.snapshot()
"""


def test_a_prune_killed_midway_leaves_nothing_the_next_snapshot_does_not_free(tmp_path):
    """kill -9 while a snapshot is pruned (a real subprocess, killed as soon as an old
    snapshot stops being complete): at the next start and snapshot, snapshots/ holds
    only complete snapshots. Deleted in place, rmtree took manifest.json before
    vpdq.index on this filesystem, and the rest stayed for good: no manifest, no
    temporary name."""
    from hashmatch.engine.snapshot_files import list_snapshots

    data = tmp_path / "d"
    rng = np.random.default_rng(5)
    videos = [SignalRecord("vpdq", "", frames=rng.integers(0, 256, (2000, 32), dtype=np.uint8))
              for _ in range(100)]  # fmt: skip
    with Engine.open(data) as engine:
        engine.ingest(records(codes(1000)), list_name="l")
        engine.ingest(videos, list_name="v")
        engine.snapshot()
        engine.snapshot()
    snaps = data / "snapshots"
    child = subprocess.Popen([sys.executable, "-c", _PRUNE_LOOP, str(data)])
    deadline = time.monotonic() + 60
    try:
        complete = {m.parent.name for m in list_snapshots(snaps)}
        while True:  # kill as the prune of a complete snapshot begins
            assert child.poll() is None and time.monotonic() < deadline
            now = {m.parent.name for m in list_snapshots(snaps)}
            if complete - now:
                break
            complete = now
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
    with Engine.open(data) as engine:
        engine.snapshot()
        assert found(engine, codes(1000)) == 1000
    for entry in snaps.iterdir():
        assert (entry / "manifest.json").is_file(), f"{entry.name} was left without one"


@pytest.mark.parametrize("which", ["manifest.json", "pdq.index/manifest.json"])
@pytest.mark.parametrize("text", ["", '{"format": 2, "change_'], ids=["empty", "cut short"])
def test_an_empty_or_cut_short_manifest_is_named_with_what_to_do_and_refused(tmp_path, which, text):
    """An empty manifest.json (a copy cut short) was skipped as json's bare "Expecting
    value: line 1 column 1 (char 0)": neither the file nor the fix was named. The
    snapshot's own manifest and its per-type index's manifest alike."""
    from hashmatch.server.cli import cli

    data = tmp_path / "d"
    with Engine.open(data) as e:
        e.ingest(records(codes(10)), list_name="l")
        snap = e.snapshot()
    (snap / which).write_text(text)
    result = CliRunner().invoke(
        cli, ["index", "stats"], env={"HASHMATCH_DATA_DIR": str(data)}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "loaded from store" in result.output  # still refused
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1, result.output
    said = skipped[0]
    assert f"{snap / which} is {'empty (0 bytes)' if not text else 'corrupt, not a JSON'}" in said
    assert f"delete {snap} and run `hashmatch index snapshot`" in said
    assert "Expecting value: line 1 column 1" not in said
