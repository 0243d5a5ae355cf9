"""kill -9 during a large ingest (a real subprocess) loses no acknowledged batch; kill -9
while a store is being created leaves one that opens as new.

The child ingests a deterministic stream of PDQ hashes and prints ``ACK n`` after
each batch commits (``n`` records consumed so far). The parent SIGKILLs it
mid-ingest, then checks: every acknowledged record is in the store, SQLite's
integrity check passes, and an Engine opened on the directory verifies index <=> store
and can finish the ingest idempotently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

N = 60_000
BATCH = 2_000

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    data, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    codes = np.random.default_rng(7).integers(0, 256, (n, 32), dtype=np.uint8)
    engine = Engine.open(data, eager=False)

    def records():
        for i in range(n):
            yield SignalRecord("pdq", codes[i].tobytes().hex(), line=i + 1)

    def ack(done):
        print(f"ACK {done}", flush=True)

    engine.ingest(records(), list_name="big", actor="crash", batch_size=batch, progress=ack)
    print("DONE", flush=True)
    """
)


def test_kill_9_mid_ingest_loses_no_acknowledged_batch(tmp_path):
    data = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(N), str(BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = 0
    deadline = time.monotonic() + 60
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("ACK"):
                acked = int(line.split()[1])
                if acked >= 4 * BATCH:  # several batches durable, more in flight
                    os.kill(child.pid, signal.SIGKILL)
                    break
            assert not line.startswith("DONE"), "ingest finished before the kill"
            assert time.monotonic() < deadline
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()  # else a ResourceWarning under -W error::ResourceWarning
    assert child.returncode == -signal.SIGKILL
    assert acked >= 4 * BATCH

    codes = np.random.default_rng(7).integers(0, 256, (N, 32), dtype=np.uint8)
    with Engine.open(data) as engine:
        store = engine.store
        assert store.integrity_check() == "ok"
        stored = store.get_list("big").signal_count
        assert acked <= stored < N
        assert stored % BATCH == 0  # whole batches or nothing: no torn batch
        # every acknowledged record is there, under its own code
        conn = store.conn()
        have = {
            bytes(c) for (c,) in conn.execute("SELECT code FROM signals WHERE id <= ?", (acked,))
        }
        assert len(have) == acked
        assert all(codes[i].tobytes() in have for i in range(0, acked, 997))
        assert engine.verify_index(sample=2000)["ok"]
        found = engine.match("pdq", codes[acked - 1 : acked])[0]
        assert [m.hash_hex for m in found] == [codes[acked - 1].tobytes().hex()]
    # the ingest can simply be run again: the durable part is unchanged, the rest added
    with Engine.open(data, eager=False) as engine:
        recs = (SignalRecord("pdq", codes[i].tobytes().hex()) for i in range(N))
        report = engine.ingest(recs, list_name="big", batch_size=20_000)
        assert (report.unchanged, report.added) == (stored, N - stored)


CREATE = """
import sys
from hashmatch.engine.store import SignalStore
print("READY", flush=True)
SignalStore(sys.stdin.readline().strip()).close()
print("DONE", flush=True)
"""


def _kill_while_creating(store: Path) -> bool:
    """Create ``store`` in a real subprocess, SIGKILLed as soon as SQLite's journal of
    the store's first transaction appears; whether it died with the store still 0 bytes."""
    child = subprocess.Popen([sys.executable, "-c", CREATE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    journal = store.with_name(store.name + "-journal")
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "READY"
        child.stdin.write(f"{store}\n")
        child.stdin.flush()
        deadline = time.monotonic() + 20
        while not journal.exists() and child.poll() is None:
            assert time.monotonic() < deadline
        if child.poll() is None:  # else it finished first (and was reaped): try again
            os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdin.close()  # else ResourceWarnings under -W error::ResourceWarning
        child.stdout.close()
    return store.exists() and store.stat().st_size == 0 and journal.exists()


def test_a_store_whose_creation_was_killed_opens_as_a_new_store(tmp_path):
    for attempt in range(20):  # the journal lives ~ms: the kill usually lands in it
        data = tmp_path / f"d{attempt}"
        data.mkdir()
        if _kill_while_creating(data / "store.sqlite"):
            break
    else:
        pytest.fail("no kill landed while the store was being created")
    with Engine.open(data) as engine:
        assert engine.store.integrity_check() == "ok"
        assert engine.store.lists() == []
        engine.ingest([SignalRecord("pdq", "ab" * 32)], list_name="l")
        assert [m.signal_id for m in engine.match_hex("pdq", ["ab" * 32])[0]] == [1]
    assert sorted(p.name for p in data.iterdir() if "journal" in p.name) == []
