"""Hostile input to the index layer: bad ids and k, and snapshots that are damaged,
forged (files rewritten with matching checksums) or left half-replaced by a crash.

The contract: bad input raises a typed error; a corrupt or mismatched snapshot is
refused with CorruptData naming what is wrong, never half-loaded; results stay
exact. Everything here is real (FAISS, the numba kernels, files on disk); the one
injected fault is a failing ``os.replace``, standing in for a crash at that point.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hashmatch.engine.errors import CorruptData, NotFound
from hashmatch.indexes import InvalidIds, InvalidK, load_index, make_index
from hashmatch.indexes.base import MAX_KNN_RESULTS

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


def test_knn_with_an_absurd_k_is_refused_not_allocated():
    index = make_index(256, "flat", 1)
    index.add(CODES[:3], np.arange(3))
    with pytest.raises(InvalidK, match="result slots") as err:
        index.search_knn(CODES[:1], 10**12)
    assert err.value.field == "k"
    with pytest.raises(InvalidK):  # the cap is on nq * k: a big batch lowers it
        index.search_knn(np.repeat(CODES[:1], 1000, axis=0), MAX_KNN_RESULTS // 999)


@pytest.mark.parametrize("kind", ["flat", "auto"])
def test_knn_k_above_the_live_count_is_padded(kind):
    """k far above the live codes: searched for the live count, -1 padded to k."""
    index = make_index(256, kind, 3, delta_min=20)
    index.add(CODES[:40], np.arange(40))
    index.add(CODES[40:50], np.arange(40, 50))  # a second (unindexed) segment
    index.remove(np.arange(0, 50, 7))
    live = [i for i in range(50) if i % 7]
    k = 100_000
    d, i = index.search_knn(CODES[:2], k)
    assert d.shape == i.shape == (2, k) and d.dtype == np.int32 and i.dtype == np.int64
    assert np.all(d[:, len(live) :] == -1) and np.all(i[:, len(live) :] == -1)
    want = np.bitwise_count(CODES[:2, None, :] ^ CODES[None, live, :]).sum(-1)
    assert np.array_equal(d[:, : len(live)], np.sort(want, axis=1))
    assert all(sorted(row[: len(live)].tolist()) == live for row in i)


# ---------------------------------------------------------------- snapshots


def brute(live_codes: np.ndarray, live_ids: np.ndarray, queries: np.ndarray, radius: int):
    d = np.bitwise_count(queries[:, None, :] ^ live_codes[None, :, :]).sum(-1)
    return [
        sorted(zip(live_ids[r <= radius].tolist(), r[r <= radius].tolist(), strict=True)) for r in d
    ]


def as_lists(result):
    lims, dist, ids = result
    return [
        sorted(zip(ids[a:b].tolist(), dist[a:b].tolist(), strict=True))
        for a, b in itertools.pairwise(lims)
    ]


def assert_exact(index, live_codes, live_ids, radius=31):
    radius = 0 if index.kind == "exact" else radius
    got = as_lists(index.search_radius(live_codes[:20], radius))
    assert got == brute(live_codes, live_ids, live_codes[:20], radius)


def saved(tmp_path, kind="mih", shards=2, n=300, **options):
    """A snapshot with an indexed segment, tombstones and an unindexed one per shard."""
    index = make_index(256, kind, shards, delta_min=20, scan_fallback=False, **options)
    index.add(CODES[: n - 30], np.arange(n - 30))
    index.compact()
    index.remove(np.arange(0, 24, 3))
    index.add(CODES[n - 30 : n], np.arange(n - 30, n))
    index.save(tmp_path / "snap")
    keep = np.ones(n, bool)
    keep[0:24:3] = False
    return tmp_path / "snap", CODES[:n][keep], np.arange(n)[keep]


def test_a_damaged_npy_header_is_corrupt_data_naming_the_file(tmp_path):
    snap, _, _ = saved(tmp_path, "auto", 1)
    f = snap / "s000/g000/ids.npy"
    data = bytearray(f.read_bytes())
    data[60] ^= 1  # inside the header's dict: numpy's tokenizer fails on it
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=r"s000/g000: ids\.npy"):
        load_index(snap, verify=False)
