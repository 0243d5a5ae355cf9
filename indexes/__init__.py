"""Exact Hamming indexes over packed binary codes (``hashmatch.indexes``).

Start here::

    from hashmatch.indexes import make_index, load_index, LiveIndex

    index = make_index(256)                 # "auto", one shard per core
    index.add(codes, ids)                   # uint8[n, 32], int64[n]
    lims, dist, ids = index.search_radius(queries, 31)   # inclusive, CSR
    index.remove(ids)                       # tombstones; NotFound for unknown ids
    index.save(path); index = load_index(path)           # snapshot dir, mmapped

Kinds: "flat" (FAISS IndexBinaryFlat), "mih" (exact multi-index hashing),
"exact" (md5/sha256 equality, radius 0), "auto" (MIH when the planner expects it
to beat a scan, else a numba scan; see :mod:`hashmatch.indexes.planner`).
The contract is in :mod:`hashmatch.indexes.base`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from hashmatch.indexes.base import (
    HammingIndex,
    InvalidCodes,
    InvalidIds,
    InvalidK,
    InvalidRadius,
    KnnResult,
    RadiusResult,
    UnknownIndexKind,
)
from hashmatch.indexes.persist import load_index as _load_index
from hashmatch.indexes.persist import read_manifest
from hashmatch.indexes.sharded import KINDS, ShardedIndex

__all__ = [
    "KINDS",
    "HammingIndex",
    "InvalidCodes",
    "InvalidIds",
    "InvalidK",
    "InvalidRadius",
    "KnnResult",
    "LiveIndex",
    "RadiusResult",
    "ShardedIndex",
    "UnknownIndexKind",
    "load_index",
    "make_index",
    "read_manifest",
]


def make_index(bits: int, kind: str = "auto", shards: int | None = None, **options) -> ShardedIndex:
    """A new empty index for ``bits``-bit codes; ``shards`` defaults to one per core.

    options: ``radius_hint`` (radius MIH is tuned for; default 31/256 of the
    width), ``memory_ratio`` (cap on index bytes / raw code bytes, default 3),
    ``delta_min`` (unindexed rows a shard buffers before merging), ``threads``
    (most threads one search uses: None = one per core, 1 = the caller's only).
    """
    return ShardedIndex(bits, kind, shards, **options)


def load_index(
    path: Path | str,
    *,
    mmap: bool = True,
    verify: bool = True,
    bits: int | None = None,
    kind: str | None = None,
) -> ShardedIndex:
    """Open a snapshot written by ``index.save(path)``; CorruptData if damaged/mismatched."""
    return _load_index(Path(path), mmap=mmap, verify=verify, bits=bits, kind=kind)


class LiveIndex:
    """A holder whose target can be swapped atomically (rebuild aside, then swap).

    Readers call through it (or take ``.current`` once per request); ``swap``
    is a single reference assignment, so each call sees either the old or the
    new index, never a mix. Writers that must not be lost during a rebuild
    should be replayed onto the new index before ``swap``. (The engine does the
    same with its own per-type dict of indexes, replaying the store's change log;
    this class is for users of the index layer alone.)
    """

    def __init__(self, index: ShardedIndex):
        self._current = index
        self._swap_lock = threading.Lock()

    @property
    def current(self) -> ShardedIndex:
        return self._current

    def swap(self, index: ShardedIndex) -> ShardedIndex:
        """Publish ``index``; returns the previous one."""
        if index.bits != self._current.bits:
            raise InvalidCodes(
                f"cannot swap a {index.bits}-bit index for a {self._current.bits}-bit one",
                field="index",
            )
        with self._swap_lock:
            old, self._current = self._current, index
        return old

    @property
    def bits(self) -> int:
        return self._current.bits

    def __len__(self) -> int:
        return len(self._current)

    def __getattr__(self, name: str):
        return getattr(self._current, name)
