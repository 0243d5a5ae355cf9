"""Where the engine gets its live indexes: :mod:`hashmatch.indexes`, per signal type.

One place decides the index kind for a type (exact equality for cryptographic
hashes, the caller's choice — default "auto" — for perceptual ones), so the
runtime never special-cases md5 or pdq.
"""

from __future__ import annotations

from pathlib import Path

from hashmatch.engine.errors import CorruptData
from hashmatch.engine.signal_types import SignalType
from hashmatch.indexes import ShardedIndex, load_index, make_index


def make_live_index(
    st: SignalType, *, kind: str = "auto", shards: int | None = None
) -> ShardedIndex:
    """A fresh, empty index for one signal type."""
    if st.exact:
        kind = "exact"
    return make_index(st.bits, kind=kind, shards=shards)


def load_live_index(path: Path, st: SignalType) -> ShardedIndex:
    """Open ``st``'s snapshot written by ``index.save(path)`` (memory-mapped, checksummed).

    CorruptData unless it holds ``st``'s codes in the kind of index ``st`` gets: a
    snapshot listing another type's file under this name must not load (every
    lookup of the type would then fail, or match the wrong type's signals).
    """
    index = load_index(path, mmap=True, bits=st.bits, kind="exact" if st.exact else None)
    if not st.exact and index.kind == "exact":
        raise CorruptData(
            f"{path}: snapshot is an 'exact' index, expected one that matches {st.name} by distance"
        )
    return index


#: (bits, exact, kind, shards) of the throw-away indexes this process has run
_WARMED: set[tuple[int, bool, str, int | None]] = set()


def warm_index_kernels(st: SignalType, *, kind: str = "auto", shards: int | None = None) -> None:
    """Run the compiled (numba) kernels ``st``'s live index will need, on a throw-away
    index of a few random codes: search, remove (a retraction), and both again on the
    index saved and loaded memory-mapped (a snapshot's read-only arrays are other
    kernel specialisations).

    Why: a server's warm-up looked codes up in its live index only, and an empty one
    (the first start of a new data dir) runs no kernel, nor does any lookup run the
    removal kernels; so with a cold numba cache (after an install or an upgrade) the
    first Match after an ingest took ~25 s and the first Retract ~5 s.

    The codes are also run merged (``compact``): 8 added codes stay an unindexed chunk
    (merged past DELTA_MIN), and "auto" scans a shard below MIN_MIH_ROWS, so neither the
    exact index's hash-table lookup (md5, sha256) nor the multi-index-hashing build and
    probe ran: they were left to the first ingest and Match once a new data dir grew past
    16k-20k codes of a type (the MIH probe took ~50 s with a cold cache on a loaded
    2-core host). An index that can hold MIH tables ("auto", "mih") gets a forced-MIH
    one, probed even where a scan would win.
    """
    import tempfile

    import numpy as np

    key = (st.bits, st.exact, kind, shards)
    if key in _WARMED:  # compiled kernels stay for the process: once is enough
        return
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (8, st.nbytes), dtype=np.uint8)
    radius = st.check_threshold(None)
    indexes = [make_live_index(st, kind=kind, shards=shards)]  # a few codes: unmerged
    # and merged (compact), as a grown index is: an exact one's hash table, and tables
    # probed even where a scan would win for an index that can hold them
    if st.exact:
        indexes.append(make_live_index(st, kind=kind, shards=shards))
    elif kind in ("auto", "mih"):
        indexes.append(make_index(st.bits, kind="mih", shards=shards, scan_fallback=False))
    for n, index in enumerate(indexes):
        index.add(codes, np.arange(1, len(codes) + 1, dtype=np.int64))
        if n:
            index.compact()
        with tempfile.TemporaryDirectory(prefix="hashmatch-warm-up-") as folder:
            index.save(Path(folder) / st.name)
            for live in (index, load_live_index(Path(folder) / st.name, st)):
                live.search_radius(codes[:2], radius)
                live.remove(np.array([1], np.int64))
                live.search_radius(codes[:2], radius)
    _WARMED.add(key)
