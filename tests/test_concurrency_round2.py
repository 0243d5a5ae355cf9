"""Regressions from the second concurrency review: each forces its interleaving (events,
a barrier, a hook at the exact window) on the real engine, server and socket.

- overlapping one-message ingests kept the live indexes in bulk mode, so no write merged
  and lookups slowed without bound;
- every RebuildIndex left its thread's SQLite connection open (fds and page cache);
- Changes could send a video as live with no frames when a retract landed between
  reading its state and its frames;
- two processes bootstrapping a fresh data dir together broke the admin token.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np

import hashmatch.server.changes as changes_module
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.client import video_signal
from hashmatch.server.testing import running_server
from hashmatch.v1 import signals_pb2


def _records(n: int, seed: int) -> list[SignalRecord]:
    rng = np.random.default_rng(seed)
    return [SignalRecord("pdq", rng.bytes(32).hex()) for _ in range(n)]


def _segments(engine: Engine) -> int:
    return sum(len(s["segments"]) for s in engine._indexes["pdq"].stats()["shards"])


def test_a_held_ingest_does_not_stop_other_ingests_from_merging(tmp_path):
    engine = Engine.open(tmp_path / "data")
    try:
        engine.ingest(_records(5000, 0), list_name="base")
        held, release = threading.Event(), threading.Event()
        store_ingest = engine.store.ingest

        def slow_for_one_list(records, *args, **kwargs):
            if kwargs.get("list_name") == "slow":
                held.set()
                release.wait(30)
            return store_ingest(records, *args, **kwargs)

        engine.store.ingest = slow_for_one_list
        slow = threading.Thread(
            target=engine.ingest, args=(_records(1, 1),), kwargs={"list_name": "slow"}
        )
        slow.start()
        try:
            assert held.wait(10)
            for i in range(150):  # one-batch ingests, as a server's Ingest messages are
                engine.ingest(_records(20, 100 + i), list_name="fast")
            # before: every one of them stayed a segment of its own (bulk mode held)
            assert _segments(engine) <= 10, _segments(engine)
        finally:
            release.set()
            slow.join(30)
        code = np.frombuffer(bytes.fromhex(_records(20, 249)[7].hash_hex), np.uint8)
        (found,) = engine.match("pdq", code, threshold=0)
        assert len(found) == 1
    finally:
        engine.close()


def _store_fds(data_dir: Path) -> int:
    store = str((data_dir / "store.sqlite").resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(store):
                count += 1
        except OSError:
            continue
    return count


def test_rebuilds_leave_no_store_connection_behind(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as ts:
        client = ts.client(timeout=60)
        client.ingest("l", [signals_pb2.Signal(hash={"signal_type": "pdq", "hex": r.hash_hex})
                            for r in _records(2000, 2)])  # fmt: skip
        list(client.rebuild())
        # the reply's last message comes before the rebuild thread has released its
        # connection: wait for the thread, or a loaded box counts its fds (a flake)
        assert ts.server.host.wait_background(30)
        before = _store_fds(data)
        for _ in range(6):
            assert list(client.rebuild())[-1].finished
        assert ts.server.host.wait_background(30)
        # before: each rebuild's thread kept its connection (store + -wal fds, cache)
        assert _store_fds(data) <= before + 1, (before, _store_fds(data))


def test_changes_send_a_video_whole_even_when_it_is_retracted_mid_read(tmp_path, monkeypatch):
    frames = [f"{i + 1:064x}" for i in range(5)]
    with running_server(tmp_path / "data") as ts:
        client = ts.client()
        assert client.ingest("videos", [video_signal(frames)]).added == 1
        (video,) = ts.engine.store.signals(list_name="videos")
        real_frames = changes_module._frames

        def retract_first(store, ids):  # the retract lands between state and frames
            done = threading.Thread(
                target=ts.engine.retract, kwargs={"list_name": "videos", "signal_ids": [video.id]}
            )
            done.start()
            done.join(10)
            return real_frames(store, ids)

        monkeypatch.setattr(changes_module, "_frames", retract_first)
        (change,) = [c for r in client.changes(0) for c in r.changes]
        assert ts.engine.store.signals(ids=[video.id])[0].retracted_at is not None
    # one snapshot: live with its 5 frames (as of before the retract), never live and empty
    assert change.live and len(change.frames) == 5


def _bootstrap(auth_path: str, barrier, out) -> None:
    from hashmatch.server.auth import bootstrap_admin

    barrier.wait(10)
    try:
        out.put(("ok", bootstrap_admin(Path(auth_path))))
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(("error", repr(exc)))


def test_two_processes_bootstrapping_one_data_dir_agree_on_the_admin_token(tmp_path):
    """Two servers (or serve + `hashmatch token`) starting together on a fresh volume:
    before, one failed on the shared temp file, or admin.token held a token auth.toml
    did not (the operator locked out)."""
    from hashmatch.server.auth import TokenAuth

    context = multiprocessing.get_context("fork")
    for round_ in range(20):
        data = tmp_path / f"r{round_}"
        data.mkdir()
        barrier, out = context.Barrier(2), context.Queue()
        procs = [context.Process(target=_bootstrap, args=(str(data / "auth.toml"), barrier, out))
                 for _ in range(2)]  # fmt: skip
        for p in procs:
            p.start()
        results = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(10)
        assert [kind for kind, _ in results] == ["ok", "ok"], results
        tokens = [token for _, token in results if token]
        assert len(tokens) == 1, results  # one process created the files, the other saw them
        assert (data / "admin.token").read_text().strip() == tokens[0]
        assert TokenAuth.from_file(data / "auth.toml").authenticate(
            [("authorization", f"Bearer {tokens[0]}")]
        )
        assert sorted(p.name for p in data.iterdir()) == ["admin.token", "auth.toml"]
