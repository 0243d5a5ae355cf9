"""Hostile input to the index layer: bad ids and k, and snapshots that are damaged,
forged (files rewritten with matching checksums) or left half-replaced by a crash.

The contract: bad input raises a typed error; a corrupt or mismatched snapshot is
refused with CorruptData naming what is wrong, never half-loaded; results stay
exact. Everything here is real (FAISS, the numba kernels, files on disk); the one
injected fault is a failing ``os.replace``, standing in for a crash at that point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from hashmatch.engine.errors import CorruptData, NotFound
from hashmatch.indexes import InvalidIds, InvalidK, load_index, make_index, persist
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


def rewrite(snap: Path, rel: str, transform) -> None:
    """Rewrite one array file and its manifest entry to match (a forged, or foreign,
    snapshot: every checksum holds)."""
    f = snap / rel
    np.save(f, transform(np.load(f)))
    refresh_manifest(snap)


def refresh_manifest(snap: Path) -> None:
    manifest = json.loads((snap / "manifest.json").read_text())
    for entry in manifest["layout"]:
        for g in entry["segments"]:
            for name, want in g["files"].items():
                data = (snap / g["dir"] / name).read_bytes()
                want.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (snap / "manifest.json").write_text(json.dumps(manifest))


FORGED = [
    ("exact", "order.npy", lambda a: np.full_like(a, 10**9), "order.npy: rows outside"),
    ("exact", "order.npy", lambda a: np.zeros_like(a), "order.npy: not a permutation"),
    ("exact", "skeys.npy", lambda a: a[::-1].copy(), "skeys.npy"),
    ("exact", "skeys.npy", lambda a: np.sort(a + np.uint64(1)), "skeys.npy"),
    ("mih", "words.npy", lambda a: a.view(np.uint8), "words.npy: expected"),
    ("mih", "words.npy", lambda a: np.asfortranarray(a), "words.npy: expected C-ordered"),
    ("mih", "rows.npy", lambda a: np.full_like(a, 0xFFFFFFFF), "rows.npy: table 1 lists row"),
    ("mih", "rows.npy", lambda a: np.full_like(a, 2**31), "rows.npy: table 1 does not list"),
    ("mih", "rows.npy", lambda a: a.astype(np.int64), "rows.npy: expected"),
    ("mih", "offsets.npy", lambda a: np.full_like(a, 2**31), "offsets.npy: table 0"),
    ("mih", "offsets.npy", lambda a: a.astype(np.int64), "offsets.npy: expected"),
    ("mih", "ids.npy", lambda a: a.astype(np.int32), "ids.npy: expected int64"),
    ("mih", "ids.npy", lambda a: a[:, None], "ids.npy: expected int64"),
    ("flat", "ids.npy", lambda a: a.astype(np.float64), "ids.npy: expected int64"),
    ("auto", "words.npy", lambda a: np.ascontiguousarray(a[:, :2]), "words.npy: expected"),
]


@pytest.mark.parametrize(("kind", "name", "transform", "match"), FORGED)
def test_forged_segment_arrays_are_refused(tmp_path, kind, name, transform, match):
    snap, _, _ = saved(tmp_path, kind, 1, n=60 if kind == "auto" else 300)
    rewrite(snap, f"s000/g000/{name}", transform)
    with pytest.raises(CorruptData, match=f"s000/g000: {match}"):
        load_index(snap)


def test_a_foreign_faiss_file_is_refused(tmp_path):
    snap, _, _ = saved(tmp_path, "flat", 1)
    faiss.write_index_binary(faiss.IndexBinaryFlat(128), str(snap / "s000/g000/flat.faissindex"))
    refresh_manifest(snap)
    with pytest.raises(CorruptData, match=r"flat\.faissindex: expected a 256-bit IndexBinaryFlat"):
        load_index(snap)


def test_damaged_mih_offsets_without_verify_are_refused_not_searched(tmp_path):
    """verify=False skips the checksums: out-of-range offsets used to reach the
    kernels unchecked (SIGSEGV or garbage)."""
    snap, _, _ = saved(tmp_path, "mih", 1)
    f = snap / "s000/g000/offsets.npy"
    offsets = np.load(f)
    offsets[1::2] = 0xFFFFFFF0  # same size, so only the checksum would notice
    np.save(f, offsets)
    with pytest.raises(CorruptData, match=r"offsets\.npy: table 0 does not run from 0 to"):
        load_index(snap, verify=False)


def test_split_key_tables_pass_the_checks_and_stay_exact(tmp_path, monkeypatch):
    """Row-list entries of split-key tables carry key bits above the row number: the
    range check masks them off (a plain max would refuse every such snapshot)."""
    from hashmatch.indexes import planner

    monkeypatch.setattr(planner, "plan_tables", lambda *a, **k: ([16] * 16, [12] * 16))
    snap, codes, ids = saved(tmp_path, "mih", 1)
    meta = json.loads((snap / "manifest.json").read_text())["layout"][0]["segments"][0]["meta"]
    assert meta["shifts"][1:] == [4] * 15 and meta["rb"] == 28
    for mmap in (True, False):
        assert_exact(load_index(snap, mmap=mmap), codes, ids)


@pytest.mark.parametrize("kind", ["flat", "mih", "exact"])
def test_any_damaged_header_without_verify_is_corrupt_data_or_exact(tmp_path, kind):
    """verify=False skips the checksums: whatever a flipped header byte does, the
    load either refuses it with CorruptData or answers exactly. (.npy headers: length,
    keys, shape; FAISS: d, code_size, ntotal.)"""
    snap, codes, ids = saved(tmp_path, kind)
    files = sorted(f for f in snap.rglob("*") if f.is_file() and f.name != "manifest.json")
    for f in files:
        original = f.read_bytes()
        for at in (8, 30, 60) if f.suffix == ".npy" else (4, 8, 12):
            damaged = bytearray(original)
            damaged[at] ^= 0x21
            f.write_bytes(bytes(damaged))
            try:
                index = load_index(snap, verify=False)
            except CorruptData as exc:
                assert f"{f.parent.parent.name}/{f.parent.name}" in str(exc)
            else:
                assert_exact(index, codes, ids)
        f.write_bytes(original)


def edit_manifest(snap: Path, edit) -> None:
    manifest = json.loads((snap / "manifest.json").read_text())
    edit(manifest)
    (snap / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["auto", "flat", "mih"])
@pytest.mark.parametrize("bits", [128, 248, 264, "256", 256.0])
def test_manifest_bits_must_match_the_codes(tmp_path, kind, bits):
    """bits edited 256 -> 128 used to load and answer on half of each code; 248
    keeps the word count (caught by the padding bits), "256"/256.0 are not ints."""
    snap, _, _ = saved(tmp_path, kind, 1, n=60 if kind == "auto" else 300)
    edit_manifest(snap, lambda m: m.update(bits=bits))
    with pytest.raises(CorruptData, match=r"words\.npy|flat\.faissindex|manifest bits|MIH tables"):
        load_index(snap)


def swap_shards(snap: Path) -> None:
    """Swap two shard directories together with their manifest entries: every
    checksum and count still holds."""
    (snap / "s000").rename(snap / "tmp")
    (snap / "s001").rename(snap / "s000")
    (snap / "tmp").rename(snap / "s001")

    def edit(m):
        m["layout"].reverse()
        for s, entry in enumerate(m["layout"]):
            for g in entry["segments"]:
                g["dir"] = f"s{s:03d}/" + g["dir"].split("/")[1]

    edit_manifest(snap, edit)


@pytest.mark.parametrize("kind", ["flat", "mih", "exact"])
def test_ids_in_the_wrong_shard_are_refused(tmp_path, kind):
    """Loaded, such a snapshot made remove(live id) raise NotFound and an upsert
    leave two live copies."""
    snap, _, _ = saved(tmp_path, kind, 2)
    swap_shards(snap)
    with pytest.raises(CorruptData, match=r"s000/g000 holds id .* belongs in shard 1"):
        load_index(snap)


def drop_last_shard(m):
    m.update(shards=1, layout=m["layout"][:1], count=m["layout"][0]["live"])


def dup_first_shard(m):
    m.update(
        shards=3, layout=m["layout"] + m["layout"][:1], count=m["count"] + m["layout"][0]["live"]
    )


def drop_last_segment(m):
    gone = m["layout"][0]["segments"].pop()
    m["layout"][0]["live"] -= gone["rows"]
    m["count"] -= gone["rows"]


def dup_last_segment(m):
    again = m["layout"][0]["segments"][-1]
    m["layout"][0]["segments"].append(again)
    m["layout"][0]["live"] += again["rows"]
    m["count"] += again["rows"]


def dirs_swapped(m):
    segs = m["layout"][0]["segments"]
    segs[0]["dir"], segs[1]["dir"] = segs[1]["dir"], segs[0]["dir"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (drop_last_shard, "s001 is not in the manifest"),
        (dup_first_shard, "s00[02]"),
        (drop_last_segment, "s000/g001 is not in the manifest"),
        (dup_last_segment, "listed at 's000/g001', not s000/g002"),
        (dirs_swapped, "listed at 's000/g001', not s000/g000"),
        (lambda m: m.update(kind="flat"), "a 'mih' segment in a 'flat' index"),
        (lambda m: m.update(kind="exact"), "a 'mih' segment in a 'exact' index"),
        (lambda m: m.update(count=str(m["count"])), "manifest count"),
        (lambda m: m.update(version=True), "snapshot version True"),
        (lambda m: m.update(version=1.0), "snapshot version 1.0"),
        (lambda m: m["layout"][0].update(live=float(m["layout"][0]["live"])), "manifest live"),
        (lambda m: m["layout"][0]["segments"][0]["files"].pop("dead.npy"), "dead.npy is not in"),
        (lambda m: m["layout"][0]["segments"][1]["files"].pop("words.npy"), "lists files"),
    ],
)
def test_a_manifest_that_does_not_fit_the_files_is_refused(tmp_path, edit, match):
    """Each edit keeps the manifest self-consistent (counts add up): only checking
    it against the directory tree, the segment types and the ids catches it."""
    snap, _, _ = saved(tmp_path, "mih", 2)
    edit_manifest(snap, edit)
    with pytest.raises(CorruptData, match=match):
        load_index(snap)


def test_stray_files_and_directories_are_refused(tmp_path):
    snap, codes, ids = saved(tmp_path, "mih", 2)
    (snap / "s000/g000/junk.npy").write_bytes(b"x")
    with pytest.raises(CorruptData, match=r"s000/g000/junk\.npy is not in the manifest"):
        load_index(snap)
    (snap / "s000/g000/junk.npy").unlink()
    (snap / "s000/g007").mkdir()
    with pytest.raises(CorruptData, match="s000/g007 is not in the manifest"):
        load_index(snap)
    (snap / "s000/g007").rmdir()
    assert_exact(load_index(snap), codes, ids)


@pytest.mark.parametrize("spread", [1, 10**9])  # dense ids (bitmap), sparse (sort)
def test_an_id_live_twice_is_refused(tmp_path, spread):
    """A forged delta segment repeating a live id of the indexed one: upsert and
    remove would only ever see one of the two copies."""
    index = make_index(256, "mih", 1, delta_min=20)
    index.add(CODES[:270], np.arange(270) * spread)
    index.compact()
    index.add(CODES[270:], np.arange(270, 300) * spread)
    index.save(tmp_path / "snap")
    assert len(load_index(tmp_path / "snap")) == 300
    dup = 260 * spread
    rewrite(tmp_path / "snap", "s000/g001/ids.npy", lambda a: np.append(a[:-1], dup))
    with pytest.raises(CorruptData, match=f"shard 0 holds id {dup} live twice"):
        load_index(tmp_path / "snap")


@pytest.mark.parametrize("kind", ["flat", "mih", "auto", "exact"])
def test_a_good_snapshot_still_loads_exact_and_takes_updates(tmp_path, kind):
    snap, codes, ids = saved(tmp_path, kind, 3)
    index = load_index(snap, bits=256, kind=kind)
    assert_exact(index, codes, ids)
    index.remove(ids[:5])
    index.add(codes[5:8], ids[5:8])  # upsert of live ids
    assert_exact(index, codes[5:], ids[5:])


# ---------------------------------------------------------------- replacing a snapshot


def siblings(snap: Path) -> list[str]:
    return sorted(p.name for p in snap.parent.iterdir() if p.name.startswith(snap.name + "."))


def one_code_index(value: int, n: int = 3):
    index = make_index(256, "flat", 1)
    index.add(np.full((n, 32), value, np.uint8), np.arange(n))
    return index


def test_a_failed_rename_puts_the_old_snapshot_back(tmp_path, monkeypatch):
    """A failure between the two renames of a replacing save used to leave no
    snapshot at ``path`` (only ``path.old-<ns>``)."""
    snap = tmp_path / "snap"
    one_code_index(1).save(snap)
    real, calls = os.replace, []

    def replace(src, dst):  # the second rename (temp -> path) fails, as on a crash
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("injected: disk gone between the renames")
        return real(src, dst)

    monkeypatch.setattr(persist.os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        one_code_index(2, 5).save(snap)
    monkeypatch.setattr(persist.os, "replace", real)
    assert siblings(snap) == []  # old moved back, temp removed
    index = load_index(snap)
    assert len(index) == 3 and index.search_radius(np.full((1, 32), 1, np.uint8), 0)[0][-1] == 3


CHILD = """
import os, signal, sys
import numpy as np
from hashmatch.indexes import make_index, persist

index = make_index(256, "flat", 1)
index.add(np.full((5, 32), 2, np.uint8), np.arange(5))
real = os.replace

def replace_then_die(src, dst):
    real(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between the two renames

persist.os.replace = replace_then_die
index.save(sys.argv[1])
"""


def test_kill_9_between_the_renames_loses_no_snapshot(tmp_path, caplog):
    """A real process killed between the renames leaves ``path.old-<ns>`` and its
    full temp dir: load_index falls back to the old snapshot (logged); the next save
    removes the dead process's temp dir and the superseded old snapshot."""
    snap = tmp_path / "snap"
    one_code_index(1).save(snap)
    child = subprocess.run([sys.executable, "-c", CHILD, str(snap)], timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert not snap.exists()
    names = siblings(snap)
    assert len(names) == 2 and names[0].startswith("snap.old-")
    assert names[1].startswith("snap.tmp-")
    live_tmp = tmp_path / f"snap.tmp-{os.getppid()}-1"  # a save by a running process
    live_tmp.mkdir()
    with caplog.at_level(logging.WARNING, logger="hashmatch.indexes.persist"):
        index = load_index(snap)
    assert len(index) == 3  # the previous snapshot, not the half-published one
    assert "a save was interrupted" in caplog.text and names[0] in caplog.text
    one_code_index(4, 7).save(snap)
    assert siblings(snap) == [live_tmp.name]  # only the running process's temp is kept
    assert len(load_index(snap)) == 7
