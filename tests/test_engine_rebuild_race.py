"""A rebuild's swap against a lookup that has just synced (concurrency review).

Lookups read the published index map without a lock, right after ``sync()``. The
rebuild used to publish its new indexes first and replay the changes committed during
the rebuild after: a lookup that had synced just before the swap then read the new map
without a signal whose ingest had returned. The interleaving is forced here with
events (the window is a GIL preemption wide in real use); every part is the real engine.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord


def test_a_lookup_during_the_swap_finds_a_signal_ingested_during_the_rebuild(tmp_path):
    engine = Engine.open(tmp_path / "data", shards=2)
    try:
        rng = np.random.default_rng(0)
        engine.ingest([SignalRecord("pdq", rng.bytes(32).hex()) for _ in range(100)],
                      list_name="l")  # fmt: skip
        x = rng.bytes(32).hex()
        built, reader_synced, replaying = threading.Event(), threading.Event(), threading.Event()
        build, sync, changes_since = (
            engine._build_from_store,
            engine.sync,
            engine.store.changes_since,
        )

        def paused_build(progress=None):
            result = build(progress)  # the store read at counter c
            built.set()
            reader_synced.wait(10)  # X is ingested and the reader syncs meanwhile
            return result

        def paused_sync(*reads):  # (a lookup passes its store reads)
            n = sync(*reads)
            if threading.current_thread().name == "reader":  # preempted after sync()
                reader_synced.set()
                replaying.wait(10)
            return n

        def slow_changes_since(seq):
            if threading.current_thread().name == "rebuild":  # the swap's replay
                replaying.set()
                time.sleep(0.3)  # stands for replaying many changes
            return changes_since(seq)

        engine._build_from_store, engine.sync = paused_build, paused_sync
        engine.store.changes_since = slow_changes_since
        rebuild = threading.Thread(target=engine.rebuild_index, name="rebuild")
        rebuild.start()
        assert built.wait(10)
        assert engine.ingest([SignalRecord("pdq", x)], list_name="l").added == 1  # returned
        found: dict = {}
        reader = threading.Thread(
            target=lambda: found.setdefault("m", engine.match_hex("pdq", [x])), name="reader"
        )
        reader.start()
        reader.join(20)
        rebuild.join(20)
        assert replaying.is_set(), "the interleaving was not forced"
        assert [m.distance for m in found["m"][0]] == [0]  # missed before the fix
        assert [m.distance for m in engine.match_hex("pdq", [x])[0]] == [0]
    finally:
        engine.close()
