"""Hostile input to the index layer: bad ids and k, and snapshots that are damaged,
forged (files rewritten with matching checksums) or left half-replaced by a crash.

The contract: bad input raises a typed error; a corrupt or mismatched snapshot is
refused with CorruptData naming what is wrong, never half-loaded; results stay
exact. Everything here is real (FAISS, the numba kernels, files on disk); the one
injected fault is a failing ``os.replace``, standing in for a crash at that point.
"""

from __future__ import annotations

import numpy as np
import pytest

from hashmatch.engine.errors import NotFound
from hashmatch.indexes import InvalidIds, make_index

CODES = np.random.default_rng(0).integers(0, 256, (300, 32), dtype=np.uint8)


def test_negative_ids_are_refused_on_add():
    index = make_index(256, "flat", 2)
    ids = np.arange(100) - 50
    with pytest.raises(InvalidIds, match="negative") as err:
        index.add(CODES[:100], ids)
    assert err.value.field == "ids" and err.value.index == 0
    assert len(index) == 0  # nothing added
    index.add(CODES[:100], ids + 50)
    d, i = index.search_knn(CODES[:1], 1)
    assert d.tolist() == [[0]] and i.tolist() == [[0]]
    # removing a negative id is a lookup of an id that can never be live
    with pytest.raises(NotFound):
        index.remove(np.array([-1]))
    assert index.remove(np.array([-1]), missing_ok=True) == 0
