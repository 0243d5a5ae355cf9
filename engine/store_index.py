"""Where the engine gets its live indexes from, and a small FAISS fallback.

The indexes proper live in :mod:`hashmatch.indexes` (``make_index(bits, kind,
shards)``). This module asks for one there and only falls back to
:class:`FlatIndex` (FAISS ``IndexBinaryFlat`` behind an id map) when that factory
is missing, so the store and matcher work, exactly, on any checkout.
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from hashmatch.engine.signal_types import SignalType


class FlatIndex:
    """Exact brute-force Hamming index (FAISS), radius inclusive, tombstones by removal."""

    kind = "flat-fallback"

    def __init__(self, bits: int):
        self.bits = bits
        self._index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
        self._lock = threading.RLock()

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if len(codes):
            with self._lock:
                self._index.add_with_ids(codes, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        with self._lock:
            return int(self._index.remove_ids(ids))

    def search_radius(self, queries: np.ndarray, radius: int):
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        with self._lock:
            if self._index.ntotal == 0:
                return (
                    np.zeros(len(queries) + 1, np.int64),
                    np.empty(0, np.int32),
                    np.empty(0, np.int64),
                )
            lims, dist, ids = self._index.range_search(queries, int(radius) + 1)
        return lims.astype(np.int64), dist.astype(np.int32), ids.astype(np.int64)

    def search_knn(self, queries: np.ndarray, k: int):
        with self._lock:
            d, i = self._index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
        return d.astype(np.int32), i.astype(np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def save(self, path: Path) -> None:
        with self._lock:
            faiss.write_index_binary(self._index, str(path))

    @classmethod
    def load(cls, path: Path) -> FlatIndex:
        out = cls.__new__(cls)
        out._index = faiss.read_index_binary(str(path))
        out.bits = out._index.d
        out._lock = threading.RLock()
        return out


def make_live_index(st: SignalType, *, kind: str = "auto", shards: int | None = None):
    """A fresh, empty index for one signal type (the indexes package's, if present)."""
    try:
        from hashmatch.indexes import make_index
    except ImportError:
        return FlatIndex(st.bits)
    if st.exact and kind == "auto":
        kind = "exact"
    return make_index(st.bits, kind=kind, shards=shards)


def save_index(index, path: Path) -> None:
    index.save(path)


def load_index(path: Path):
    """Load what :func:`save_index` wrote (the indexes package's loader, if present)."""
    try:
        from hashmatch.indexes import load_index as _load
    except ImportError:
        return FlatIndex.load(path)
    return _load(path)
