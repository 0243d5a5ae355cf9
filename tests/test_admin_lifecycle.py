"""Index operations next to live traffic: a snapshot does not stall lookups, a remote
rebuild leaves a snapshot behind, and a stop during a rebuild waits for it. Real
engines, real snapshot files and a real server over a socket."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord, SignalStore
from hashmatch.indexes.sharded import ShardedIndex
from hashmatch.server.testing import running_server

THRESHOLD = 31


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


def records(c: np.ndarray) -> list[SignalRecord]:
    return [SignalRecord("pdq", row.tobytes().hex(), line=i + 1) for i, row in enumerate(c)]


def near(c: np.ndarray, seed: int) -> np.ndarray:
    """Copies of ``c`` with 0..40 random bits flipped each (some in range, some not)."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(c, axis=1)
    for row, k in zip(bits, rng.integers(0, 41, len(c)), strict=True):
        row[rng.choice(256, k, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def brute_force(stored: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    """Hex of every stored code within THRESHOLD of each query, by counting bits."""
    dist = np.unpackbits(queries[:, None, :] ^ stored[None, :, :], axis=2).sum(axis=2)
    return [{stored[j].tobytes().hex() for j in np.flatnonzero(d <= THRESHOLD)} for d in dist]


def matched(engine: Engine, queries: np.ndarray) -> list[set[str]]:
    return [{m.hash_hex for m in ml} for ml in engine.match("pdq", queries, threshold=THRESHOLD)]


# ---------------------------------------------------------------- snapshot vs traffic


def test_snapshot_taken_during_ingest_and_lookups_loads_exact(tmp_path):
    data = tmp_path / "d"
    batches = [codes(400, seed) for seed in range(8)]
    with Engine.open(data) as e:
        e.ingest(records(batches[0]), list_name="l")
        errors: list[BaseException] = []

        def traffic() -> None:
            try:
                for i, batch in enumerate(batches[1:], 1):
                    e.ingest(records(batch), list_name="l")
                    assert matched(e, batch[:20]) == [{r.tobytes().hex()} for r in batch[:20]]
                    e.retract(list_name="l", hashes=[("pdq", batches[i - 1][0].tobytes().hex())])
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        writer = threading.Thread(target=traffic)
        writer.start()
        kept = tmp_path / "kept"  # each one as written (later ones prune older ones)
        snaps = []
        for _ in range(4):
            path = e.snapshot()
            snaps.append(shutil.copytree(path, kept / path.name))
        writer.join(60)
        assert not errors and not writer.is_alive()
    live = np.concatenate([b[1:] for b in batches[:-1]] + [batches[-1]])
    queries = near(np.concatenate([live[::7], codes(50, 99)]), seed=5)
    want = brute_force(live, queries)
    assert sum(map(len, want)) > 100  # the check is not vacuous
    for snap in snaps:  # each loads, and replay on top of it is exact
        shutil.rmtree(data / "snapshots")
        shutil.copytree(snap, data / "snapshots" / snap.name)
        with Engine.open(data) as e:
            assert e.load_info["snapshot"] == snap.name, e.load_info
            assert matched(e, queries) == want


def test_lookup_after_a_write_completes_while_a_snapshot_is_being_written(tmp_path, monkeypatch):
    saving, release = threading.Event(), threading.Event()
    save = ShardedIndex.save

    def blocking_save(self: ShardedIndex, path: Path | str) -> None:
        saving.set()
        assert release.wait(30), "the test never released the save"
        save(self, path)

    monkeypatch.setattr(ShardedIndex, "save", blocking_save)
    first, later = codes(300, 1), codes(300, 2)
    with Engine.open(tmp_path / "d") as e:
        e.ingest(records(first), list_name="l")
        result: dict = {}
        snapshotter = threading.Thread(target=lambda: result.update(path=e.snapshot()))
        snapshotter.start()
        try:
            assert saving.wait(10)

            def write_then_look_up() -> None:
                e.ingest(records(later), list_name="l")
                result["found"] = matched(e, later[:5])

            writer = threading.Thread(target=write_then_look_up)
            writer.start()
            writer.join(10)  # the save still blocks: the write and lookup must not
            assert not writer.is_alive(), "ingest + lookup waited for the snapshot"
            assert result["found"] == [{r.tobytes().hex()} for r in later[:5]]
        finally:
            release.set()
            snapshotter.join(30)
        assert "path" in result
    monkeypatch.undo()
    with Engine.open(tmp_path / "d") as e:  # the snapshot holds `first`; replay adds `later`
        assert e.load_info["snapshot"] == result["path"].name
        assert e.load_info["replayed_changes"] >= 1
        both = np.concatenate([first, later])
        assert matched(e, both) == [{r.tobytes().hex()} for r in both]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))


# ---------------------------------------------------------------- remote rebuild


def test_remote_rebuild_writes_a_snapshot_the_next_start_loads(tmp_path):
    data, first = tmp_path / "d", codes(200, 3)
    with Engine.open(data, eager=False) as e:
        e.ingest(records(first), list_name="l")
    with running_server(data) as served:
        client = served.client()
        assert client.stats().snapshot_age_seconds < 0  # built from the store: none yet
        progress = list(client.rebuild(timeout=60))
        assert [p.stage for p in progress if p.stage == "snapshot"] == ["snapshot"] * 2
        last = progress[-1]
        assert last.finished and last.stage == "done"
        written = Path(json.loads(last.summary_json)["snapshot"])
        assert (written / "manifest.json").is_file()
        assert 0 <= client.stats().snapshot_age_seconds < 60
    with Engine.open(data) as e:  # the next start loads the rebuild's snapshot as is
        assert e.load_info["snapshot"] == written.name
        assert e.load_info["replayed_changes"] == 0
        assert matched(e, first[:10]) == [{r.tobytes().hex()} for r in first[:10]]


# ---------------------------------------------------------------- stop during a rebuild


def test_stop_during_a_rebuild_waits_for_it_and_logs_no_error(tmp_path, monkeypatch, caplog):
    """The store is not closed under a running rebuild: stop() waits while the rebuild
    is held between two reads, the rebuild then gives up (UNAVAILABLE, not INTERNAL),
    and the data dir starts fine afterwards."""
    data, stored = tmp_path / "d", codes(200, 4)
    with Engine.open(data, eager=False) as e:
        e.ingest(records(stored), list_name="l")
    reading, release = threading.Event(), threading.Event()
    iter_live = SignalStore.iter_live

    def held_iter_live(self: SignalStore, signal_type: str, **options):
        rows = iter_live(self, signal_type, **options)
        yield next(rows)
        if threading.current_thread().name == "rebuild":  # not the start-up build
            reading.set()
            assert release.wait(30), "the test never released the rebuild"
        yield from rows  # reads the store again: it must still be open

    monkeypatch.setattr(SignalStore, "iter_live", held_iter_live)
    caplog.set_level(logging.INFO)
    outcome: dict = {}
    with running_server(data, drain_seconds=0.2) as served:
        client = served.client()

        def rebuild() -> None:
            try:
                outcome["progress"] = list(client.rebuild(timeout=30))
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()

        caller = threading.Thread(target=rebuild)
        caller.start()
        assert reading.wait(10)
        stopper = threading.Thread(target=served.server.stop, kwargs={"grace": 0.2})
        stopper.start()
        try:
            stopper.join(1.5)  # the drain is over by now; the rebuild is still held
            assert stopper.is_alive(), "stop() closed the engine under a running rebuild"
        finally:
            release.set()
        stopper.join(10)
        caller.join(10)
        assert not stopper.is_alive() and not caller.is_alive()
    # the call's handler outlives the stopped server: its access-log line says it ended
    line = _access_line(caplog, "RebuildIndex")
    assert line["status"] == "UNAVAILABLE" and "shutting down" in line["error"], line
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert outcome.get("code") in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    monkeypatch.undo()
    with running_server(data) as served:  # the next start loads fine
        found = served.client().match([("pdq", r.tobytes()) for r in stored[:5]])
        assert [len(r.matches) for r in found.results] == [1] * 5


def _access_line(caplog: pytest.LogCaptureFixture, method: str, wait: float = 10.0) -> dict:
    """The access-log record of ``method`` once its call has finished (polled: the
    handler thread finishes on its own time)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for r in caplog.records:
            if r.name == "hashmatch.access" and f'"method": "{method}"' in r.getMessage():
                time.sleep(0.2)  # anything the handler logs right after its access line
                return json.loads(r.getMessage())
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {method} within {wait} s")
