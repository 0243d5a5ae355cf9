"""Natural batching of lookups: concurrent requests share engine calls, each gets its rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.batcher import LookupBatcher
from hashmatch.server.errors import DeadlineExceeded, Overloaded


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    codes = np.random.default_rng(3).integers(0, 256, (500, 32), dtype=np.uint8)
    eng = Engine.open(tmp_path_factory.mktemp("batcher"))
    eng.ingest((SignalRecord("pdq", c.tobytes().hex()) for c in codes), list_name="b", actor="test")
    eng.codes = codes
    yield eng
    eng.close()


def _gated_run(engine, gate: threading.Event, calls: list[int]):
    def run(key, codes, qualities):
        calls.append(len(codes))
        gate.wait(10)  # the first batch holds the worker so the rest queue up
        signal_type, tenant, threshold, lists, max_results, min_quality = key
        return engine.match(signal_type, codes, tenant=tenant, threshold=threshold,
                            lists=list(lists) or None, max_results=max_results,
                            qualities=qualities, min_quality=min_quality)  # fmt: skip

    return run


def test_queued_lookups_are_merged_and_split_back(engine):
    gate, calls = threading.Event(), []
    batcher = LookupBatcher(_gated_run(engine, gate, calls), threads=1, max_batch=64)
    key = ("pdq", None, 0, (), None, None)
    try:
        with ThreadPoolExecutor(21) as pool:
            futures = [
                pool.submit(
                    batcher.lookup, key, engine.codes[i : i + 1], None, timeout=lambda: 10.0
                )
                for i in range(21)
            ]
            time.sleep(0.3)
            gate.set()
            results = [f.result(10) for f in futures]
        for i, found in enumerate(results):
            assert len(found) == 1
            assert [m.hash_hex for m in found[0]] == [engine.codes[i].tobytes().hex()]
        assert sum(calls) == 21 and len(calls) <= 3, calls  # 1 alone, then the queue merged
    finally:
        gate.set()
        batcher.close()


def test_different_options_are_not_merged(engine):
    gate, calls = threading.Event(), []
    batcher = LookupBatcher(_gated_run(engine, gate, calls), threads=1)
    near = engine.codes[0].copy()
    near[0] ^= 0x0F  # 4 bits away
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(batcher.lookup, ("pdq", None, 0, (), None, None), near[None],
                                None, timeout=lambda: 10.0)  # fmt: skip
            time.sleep(0.1)
            strict = pool.submit(batcher.lookup, ("pdq", None, 0, (), None, None), near[None],
                                 None, timeout=lambda: 10.0)  # fmt: skip
            loose = pool.submit(batcher.lookup, ("pdq", None, 8, (), None, None), near[None],
                                None, timeout=lambda: 10.0)  # fmt: skip
            time.sleep(0.1)
            gate.set()
            assert not first.result(10)[0] and not strict.result(10)[0]
            assert [m.distance for m in loose.result(10)[0]] == [4]
    finally:
        gate.set()
        batcher.close()


def test_deadline_and_overload(engine):
    gate, calls = threading.Event(), []
    batcher = LookupBatcher(_gated_run(engine, gate, calls), threads=1, max_pending=2)
    key = ("pdq", None, 0, (), None, None)
    try:
        with ThreadPoolExecutor(2) as pool:
            blocker = pool.submit(batcher.lookup, key, engine.codes[:1], None,
                                  timeout=lambda: 10.0)  # fmt: skip
            time.sleep(0.1)
            with pytest.raises(DeadlineExceeded):
                batcher.lookup(key, engine.codes[1:2], None, timeout=lambda: 0.05)
            with pytest.raises(Overloaded):
                batcher.lookup(key, engine.codes[:3], None, timeout=lambda: 1.0)
            gate.set()
            assert blocker.result(10)[0]
        assert sum(calls) == 1  # the timed-out lookup was dropped, never run
    finally:
        gate.set()
        batcher.close()
