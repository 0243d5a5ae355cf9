"""Snapshot arrays loaded by several threads at once (a sharded snapshot's shards load
in parallel). numpy parses each .npy header with ``ast.literal_eval``, and CPython
3.11's AST builder keeps one recursion-depth count per interpreter: a garbage collection
that switched threads mid-parse failed a sound file with "SystemError: AST constructor
recursion depth mismatch", so the snapshot was refused as corrupt (seen in CI: the
stateful store test). Collections whose finalizers release the GIL make the switch
likely; on the old code this failed within ~25 s of such loads (8 threads)."""

from __future__ import annotations

import gc
import sys
import threading
import time

import numpy as np

from hashmatch.indexes.segments import load_npy


class _Finalized:
    """Cyclic garbage whose finalizer lets another thread run."""

    def __del__(self) -> None:
        time.sleep(0)


def test_npy_headers_parse_in_many_threads_at_once(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(10, dtype=np.int64))
    errors: list[str] = []
    stop_at = time.monotonic() + 8

    def load() -> None:
        while time.monotonic() < stop_at and not errors:
            for _ in range(5):
                garbage = _Finalized()
                garbage.self = garbage
            try:
                assert load_npy(path, True).tolist() == list(range(10))
            except ValueError as exc:
                errors.append(str(exc))

    switch, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-5)
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
        gc.set_threshold(*thresholds)
    assert not errors, errors[0]
