"""A store whose WAL lost its tail (a power cut on a disk that lied about fsync, a copy
of the data dir taken while it was written) still opens, and its index answers as the
store does: the snapshot taken of the lost changes is refused, also once new writes
bring the counter back past it, and no lost signal matches.

The child (a real process) ingests, snapshots, ingests and retracts, then dies by
SIGKILL, so every commit is still in ``store.sqlite-wal``; the test cuts that file at
points along it and checks each cut copy.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

BATCHES, PER = 6, 40

CHILD = f"""
import os, signal, sys
import numpy as np
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

engine = Engine.open(sys.argv[1])
codes = np.random.default_rng(3).integers(0, 256, ({BATCHES * PER}, 32), dtype=np.uint8)
for b in range({BATCHES}):
    part = codes[b * {PER} : (b + 1) * {PER}]
    engine.ingest([SignalRecord("pdq", c.tobytes().hex()) for c in part], list_name="l")
    if b == 1:
        engine.retract(list_name="l", signal_ids=[1, {PER} + 1])
    if b == 3:
        engine.snapshot()
os.kill(os.getpid(), signal.SIGKILL)  # no checkpoint: every commit is in the WAL
"""


def _live(data: Path) -> set[bytes]:
    conn = sqlite3.connect(data / "store.sqlite")
    try:
        rows = conn.execute("SELECT code FROM signals WHERE retracted_at IS NULL").fetchall()
    finally:
        conn.close()
    return {bytes(c) for (c,) in rows}


def _answers_as_the_store(engine: Engine, every: np.ndarray) -> None:
    live = _live(engine.data_dir)
    hits = engine.match("pdq", every, threshold=0)
    assert {every[i].tobytes() for i, h in enumerate(hits) if h} == live
    assert engine.verify_index()["ok"]


def test_a_wal_cut_anywhere_leaves_a_store_whose_index_answers_as_it_does(tmp_path):
    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", CHILD, str(killed)])
    assert child.returncode == -signal.SIGKILL
    wal = (killed / "store.sqlite-wal").read_bytes()
    assert len(wal) > 4096, "the child's commits were checkpointed: nothing to cut"
    every = np.random.default_rng(3).integers(0, 256, (BATCHES * PER, 32), dtype=np.uint8)
    fresh = np.random.default_rng(4).integers(0, 256, (BATCHES, 32), dtype=np.uint8)
    refused = 0
    for cut in np.linspace(0, len(wal), 5).astype(int).tolist():
        data = tmp_path / f"cut-{cut}"
        shutil.copytree(killed, data, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
        (data / "store.sqlite-wal").write_bytes(wal[:cut])
        with Engine.open(data) as engine:
            assert engine.store.integrity_check() == "ok"
            _answers_as_the_store(engine, every)
            behind = engine.load_info.get("skipped_snapshots", [])
            refused += any("ahead of the store" in why for why in behind)
            # one change each, past the lost ones: the lost snapshot must stay refused
            for row in fresh:
                engine.ingest([SignalRecord("pdq", row.tobytes().hex())], list_name="l")
        with Engine.open(data) as engine:
            _answers_as_the_store(engine, np.concatenate([every, fresh]))
            assert engine.store.integrity_check() == "ok"
    assert refused  # some cut lost the snapshot's changes
