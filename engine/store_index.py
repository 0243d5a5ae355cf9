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
