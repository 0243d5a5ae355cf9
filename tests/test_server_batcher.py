"""Natural batching of lookups: concurrent requests share engine calls, each gets its rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hashmatch.engine.errors import InvalidThreshold
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
    # compile the lookup kernels now: with a cold numba cache (a fresh clone running this
    # file alone) the first match took ~20 s, past the queued callers' 10 s deadlines
    eng.match("pdq", codes[:1])
    yield eng
    eng.close()


def _until(done, what: str) -> None:
    """Wait (up to 10 s) for ``done()``: a fixed sleep let a loaded CI box (2 workers
    on 2 cores) reach the assertions before the callers had taken the slot or queued."""
    for _ in range(1000):
        if done():
            return
        time.sleep(0.01)
    raise AssertionError(f"never: {what}")


def _queued(batcher: LookupBatcher, rows: int) -> None:
    _until(lambda: batcher._pending_rows == rows, f"{rows} rows queued")


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
            _until(lambda: calls, "a lookup holds the slot")
            _queued(batcher, 20)
            gate.set()
            results = [f.result(10) for f in futures]
        for i, found in enumerate(results):
            assert len(found) == 1
            assert [m.hash_hex for m in found[0]] == [engine.codes[i].tobytes().hex()]
        assert calls == [1, 20], calls  # 1 alone, then the queue merged
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
            _until(lambda: calls, "the first lookup holds the slot")
            strict = pool.submit(batcher.lookup, ("pdq", None, 0, (), None, None), near[None],
                                 None, timeout=lambda: 10.0)  # fmt: skip
            loose = pool.submit(batcher.lookup, ("pdq", None, 8, (), None, None), near[None],
                                None, timeout=lambda: 10.0)  # fmt: skip
            _queued(batcher, 2)
            gate.set()
            assert not first.result(10)[0] and not strict.result(10)[0]
            assert [m.distance for m in loose.result(10)[0]] == [4]
        assert calls == [1, 1, 1], calls  # each option set its own engine call
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
            _until(lambda: calls, "the blocker holds the slot")
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


def _plain_run(engine, threads_seen: list[str], running: list[int] | None = None):
    lock = threading.Lock()

    def run(key, codes, qualities):
        threads_seen.append(threading.current_thread().name)
        if running is not None:
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
        try:
            time.sleep(0.002)  # long enough for concurrent callers to overlap
            signal_type, tenant, threshold, lists, max_results, min_quality = key
            return engine.match(signal_type, codes, tenant=tenant, threshold=threshold,
                                lists=list(lists) or None, max_results=max_results,
                                qualities=qualities, min_quality=min_quality)  # fmt: skip
        finally:
            if running is not None:
                with lock:
                    running[0] -= 1

    return run


def test_idle_lookup_runs_inline_with_the_batched_answer(engine):
    """An idle batcher answers on the caller's thread; the answer is the one a queued
    (batched) lookup of the same rows gets, and the engine's own."""
    gate, calls = threading.Event(), []
    key = ("pdq", None, 8, (), None, None)
    near = engine.codes[:6].copy()
    near[:, 0] ^= 0x0F  # 4 bits away from stored rows
    seen: list[str] = []
    inline = LookupBatcher(_plain_run(engine, seen), threads=1)
    batched = LookupBatcher(_gated_run(engine, gate, calls), threads=1)
    try:
        alone = [inline.lookup(key, near[i : i + 1], None, timeout=lambda: 10.0) for i in range(6)]
        assert seen == [threading.current_thread().name] * 6  # no hand-off
        with ThreadPoolExecutor(7) as pool:
            holder = pool.submit(batched.lookup, key, near[:1], None, timeout=lambda: 10.0)
            _until(lambda: calls, "the holder runs inline and keeps the only slot")
            queued = [
                pool.submit(batched.lookup, key, near[i : i + 1], None, timeout=lambda: 10.0)
                for i in range(6)
            ]
            _queued(batched, 6)
            gate.set()
            merged = [f.result(10) for f in queued]
            holder.result(10)
        assert calls == [1, 6]  # the holder alone, then the six queued rows in one call
        direct = engine.match("pdq", near, threshold=8)
        for i in range(6):
            want = [(m.signal_id, m.distance, m.hash_hex) for m in direct[i]]
            assert want and [(m.signal_id, m.distance, m.hash_hex) for m in alone[i][0]] == want
            assert [(m.signal_id, m.distance, m.hash_hex) for m in merged[i][0]] == want
    finally:
        gate.set()
        inline.close()
        batched.close()


def test_inline_lookup_honours_deadline_close_and_errors(engine):
    seen: list[str] = []
    batcher = LookupBatcher(_plain_run(engine, seen), threads=1)
    key = ("pdq", None, 0, (), None, None)
    with pytest.raises(DeadlineExceeded):
        batcher.lookup(key, engine.codes[:1], None, timeout=lambda: 0.0)
    assert seen == []  # never looked up
    with pytest.raises(InvalidThreshold, match="threshold"):  # an engine error reaches the caller
        batcher.lookup(("pdq", None, 999, (), None, None), engine.codes[:1], None,
                       timeout=lambda: 10.0)  # fmt: skip
    # the slot was given back both times: the next lookup still runs inline
    found = batcher.lookup(key, engine.codes[2:3], None, timeout=lambda: 10.0)
    assert [m.hash_hex for m in found[0]] == [engine.codes[2].tobytes().hex()]
    assert seen == [threading.current_thread().name] * 2
    batcher.close()
    with pytest.raises(Overloaded):
        batcher.lookup(key, engine.codes[:1], None, timeout=lambda: 10.0)


def test_inline_and_queued_lookups_never_exceed_the_slots(engine):
    """Under many concurrent callers at most ``threads`` engine calls run at once, and
    every caller gets its own row back (inline or merged)."""
    seen: list[str] = []
    running = [0, 0]  # now, most
    batcher = LookupBatcher(_plain_run(engine, seen, running), threads=2, max_batch=8)
    key = ("pdq", None, 0, (), None, None)
    try:
        with ThreadPoolExecutor(24) as pool:
            futures = [
                pool.submit(
                    batcher.lookup, key, engine.codes[i : i + 1], None, timeout=lambda: 10.0
                )
                for i in range(200)
            ]
            results = [f.result(30) for f in futures]
        for i, found in enumerate(results):
            assert [m.hash_hex for m in found[0]] == [engine.codes[i].tobytes().hex()]
        assert running[1] <= 2, running
        assert len(seen) < 200  # some calls were merged
        assert any(name.startswith("lookup-") for name in seen)
        assert any(not name.startswith("lookup-") for name in seen)
    finally:
        batcher.close()


def test_a_full_queue_admits_another_tenant_and_batches_take_turns(engine):
    """One tenant's backlog filled the queue: every other tenant was refused, and one
    admitted waited for the whole backlog. Now another tenant gets its fair share of
    the queue, and batches alternate between the tenants queued."""
    gate, order = threading.Event(), []

    def run(key, codes, qualities):
        order.append((key[2], len(codes)))  # threshold 0: the flood's key, 1: the other's
        gate.wait(10)
        return [[] for _ in codes]

    batcher = LookupBatcher(run, threads=1, max_batch=2, max_pending=4)
    flood, other = ("pdq", None, 0, (), None, None), ("pdq", None, 1, (), None, None)
    row = engine.codes[:1]

    def look(key, share, wait=10.0):
        return batcher.lookup(key, row, None, timeout=lambda: wait, share=share)

    try:
        with ThreadPoolExecutor(8) as pool:
            holder = pool.submit(look, flood, "flood")
            _until(lambda: order, "the holder runs inline, holding the only slot")
            queued = [pool.submit(look, flood, "flood") for _ in range(4)]
            _queued(batcher, 4)
            with pytest.raises(Overloaded, match="4 hash lookups are queued"):
                look(flood, "flood", 1.0)
            with pytest.raises(Overloaded):  # no-auth mode: no share, the queue is full
                look(other, None, 1.0)
            theirs = pool.submit(look, other, "other")
            _queued(batcher, 5)
            gate.set()
            assert [len(f.result(10)) for f in [holder, *queued, theirs]] == [1] * 6
        # the holder was the flood's turn; then the other tenant's; then the flood's rows
        assert order == [(0, 1), (1, 1), (0, 2), (0, 2)]
    finally:
        gate.set()
        batcher.close()


def test_batches_take_turns_round_robin_between_three_tenants(engine):
    """With three tenants queued, the next batch was led by the oldest item of any
    tenant but the last leader: the two oldest backlogs alternated and the third
    tenant waited for one of them to drain. Now the tenant that led least recently
    leads the next batch."""
    gate, order = threading.Event(), []

    def run(key, codes, qualities):
        order.append(key[2])  # threshold: 0, 1, 2 for tenants a, b, c
        gate.wait(10)
        return [[] for _ in codes]

    batcher = LookupBatcher(run, threads=1, max_batch=1, max_pending=100)
    row = engine.codes[:1]

    def look(tenant: str, threshold: int):
        key = ("pdq", None, threshold, (), None, None)
        return batcher.lookup(key, row, None, timeout=lambda: 10.0, share=tenant)

    try:
        with ThreadPoolExecutor(8) as pool:
            holder = pool.submit(look, "a", 0)  # runs inline, holding the only slot
            _until(lambda: order, "the holder runs inline")
            futures = [holder]
            for tenant, threshold, n in (("a", 0, 3), ("b", 1, 3), ("c", 2, 1)):
                for _ in range(n):
                    futures.append(pool.submit(look, tenant, threshold))
                    _queued(batcher, len(futures) - 1)  # arrival order is queue order
            gate.set()
            assert [len(f.result(10)) for f in futures] == [1] * 8
        # after the holder (a): b, c, a in turn, then the rest of a's and b's
        assert order == [0, 1, 2, 0, 1, 0, 1, 0]  # before: [0, 1, 0, 1, 0, 1, 0, 2]
    finally:
        gate.set()
        batcher.close()
