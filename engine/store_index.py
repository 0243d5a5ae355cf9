"""Where the engine gets its live indexes: :mod:`hashmatch.indexes`, per signal type.

One place decides the index kind for a type (exact equality for cryptographic
hashes, the caller's choice — default "auto" — for perceptual ones), so the
runtime never special-cases md5 or pdq.
"""

from __future__ import annotations

from pathlib import Path

from hashmatch.engine.signal_types import SignalType
from hashmatch.indexes import ShardedIndex, load_index, make_index


def make_live_index(st: SignalType, *, kind: str = "auto", shards: int | None = None):
    """A fresh, empty index for one signal type."""
    if st.exact:
        kind = "exact"
    return make_index(st.bits, kind=kind, shards=shards)


def load_live_index(path: Path) -> ShardedIndex:
    """Open a snapshot written by ``index.save(path)`` (memory-mapped, checksummed)."""
    return load_index(path, mmap=True)
