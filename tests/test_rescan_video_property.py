"""Property (vPDQ): after any sequence of store operations, an incremental rescan leaves
the catalog holding exactly the vPDQ matches a from-scratch match of every catalogued
video finds (the engine's vPDQ, as a scan matches), with its percentages and distance,
reports exactly the difference, and reads the same through a real server.

Why: the catalog index only nominates (file, video) pairs; the decision (quality floor on
both sides, repeated frames once, >= 80% of the file's frames) is vPDQ's rule, and a
rescan used to report every nominated pair. The sibling of test_rescan_property.py
(photos): there, the fold of the change log; here, the decision per video.

The catalog is a real scan of videos written with OpenCV's VideoWriter (benign generated
frames: a moving disc on a smooth background, one video fading to flat grey, whose
frames fall under the quality floor). Shared videos are made from a catalogued video's
frames: a share of them, a few bits off or not, some repeated, some of low quality,
padded with unrelated frames.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from store_ops import LIST_OPS, apply_list_op, set_retracted, two_copies_and_a_server

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.rescan import ServerChanges, rescan
from hashmatch.engine.scan import ScanOptions, scan
from hashmatch.engine.store import SignalRecord

LISTS = ("a", "b")


def _write_video(path: Path, seed: int, frames: int = 10, fade: bool = False) -> None:
    """One frame a second (vPDQ hashes each); ``fade``: the last half flat grey."""
    w, h = 96, 64
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (w, h))
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
    for i in range(frames):
        frame = base.copy()
        cv2.circle(frame, (int(w / 2 + w / 3 * np.sin(i / 2)), h // 2), h // 5, (255,) * 3, -1)
        if fade and i >= frames // 2:
            frame[:] = 128
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> tuple[Path, list[tuple[np.ndarray, list[int]]]]:
    """A catalog of 3 scanned videos, and each one's (frames, qualities)."""
    base = tmp_path_factory.mktemp("video-property")
    tree = base / "tree"
    tree.mkdir()
    for seed in range(3):
        _write_video(tree / f"clip{seed}.mp4", seed, fade=seed == 2)
    path = base / "catalog.sqlite"
    with Catalog(path) as catalog:
        scan([tree], catalog=catalog, matcher=None,
             options=ScanOptions(types=("vpdq",), workers=0, progress=False))  # fmt: skip
        videos = [h for hashes in catalog.hashes_of([1, 2, 3]).values() for h in hashes]
    assert len(videos) == 3 and min(videos[2].qualities) < 50 <= min(videos[0].qualities)
    return path, [(v.codes, v.qualities) for v in videos]


# -- shared videos and operations --------------------------------------------------------

#: (catalogued video, share of its frames kept, bits flipped, repeats, dim frames,
#:  unrelated frames, qualities known, seed)
video_specs = st.tuples(
    st.integers(0, 2),
    st.sampled_from([0.1, 0.5, 0.8, 1.0]),
    st.sampled_from([0, 4, 31, 40]),
    st.integers(0, 3),
    st.integers(0, 4),
    st.integers(0, 8),
    st.booleans(),
    st.integers(0, 2**16),
)
pick = st.integers(0, 1000)
ARGUMENTS = {
    "ingest": (st.sampled_from(LISTS), st.lists(video_specs, min_size=1, max_size=3)),
    "retract": (pick,),
    "restore": (pick,),
    "disable": (st.sampled_from(LISTS),),
    "enable": (st.sampled_from(LISTS),),
    "relabel": (pick, st.sampled_from(["x", "y"])),
    "delete": (st.sampled_from(LISTS),),
}
operations = st.sampled_from(["ingest"] * 6 + [k for k in ARGUMENTS if k != "ingest"]).flatmap(
    lambda kind: st.tuples(st.just(kind), *ARGUMENTS[kind])
)
rounds = st.lists(
    st.tuples(st.lists(operations, min_size=1, max_size=4), st.sampled_from([1, 3, 10_000])),
    min_size=1,
    max_size=4,
)


def _shared(videos: list, spec: tuple) -> SignalRecord:
    """A shared video made from a catalogued one (see the module docstring)."""
    which, share, flips, repeats, dim, unrelated, known, seed = spec
    rng = np.random.default_rng(seed)
    codes, _ = videos[which]
    kept = codes[: max(1, round(share * len(codes)))].copy()
    bits = np.unpackbits(kept, axis=1)
    for row in bits:
        row[rng.choice(256, flips, replace=False)] ^= 1
    frames = np.concatenate([np.packbits(bits, axis=1), kept[:repeats],
                             rng.integers(0, 256, (unrelated, 32), dtype=np.uint8)])  # fmt: skip
    qualities = [90] * len(frames)
    for i in rng.choice(len(frames), min(dim, len(frames)), replace=False):
        qualities[i] = 10
    return SignalRecord("vpdq", "", frames=frames, frame_qualities=qualities if known else None,
                        timestamps=list(range(len(frames))), external_id=f"s{seed}")  # fmt: skip


def _apply(engine, op: tuple, videos: list) -> None:
    store = engine.store
    kind, arg = op[0], op[1]
    if kind in LIST_OPS:
        apply_list_op(store, kind, arg)
        return
    if kind == "ingest":
        engine.ingest([_shared(videos, spec) for spec in op[2]], list_name=arg)
        return
    known = store.signals(limit=100_000)
    if not known:
        return
    target = known[arg % len(known)]
    if kind in ("retract", "restore"):
        set_retracted(engine, kind, target)
    elif kind == "relabel":  # the same video again, new labels: an update the rescan reads
        codes, qualities, stamps = store.frames(target.id)
        engine.ingest([SignalRecord("vpdq", "", frames=codes, labels=(op[2],),
                                    frame_qualities=None if None in qualities else qualities,
                                    timestamps=stamps, external_id=target.external_id)],
                      list_name=target.list_name)  # fmt: skip


# -- the oracle: a from-scratch match of the whole catalog -------------------------------


def _fresh(engine, catalog: Catalog) -> dict[tuple[int, int], tuple]:
    """(file, signal) -> (query %, target %, distance, list) of every catalogued video,
    matched now by the engine, as a scan matches it."""
    out = {}
    file_ids = [fid for (fid,) in catalog.conn.execute("SELECT id FROM files")]
    for file_id, hashes in catalog.hashes_of(file_ids).items():
        for h in hashes:
            (found,) = engine.match("vpdq", h.codes, qualities=h.qualities)
            for m in found:
                out[(file_id, m.signal_id)] = (m.query_match_pct, m.target_match_pct,
                                               m.distance, m.list_name)  # fmt: skip
    return out


def _held(catalog: Catalog) -> dict[tuple[int, int], tuple]:
    return {
        (fid, sid): (q, t, d, name)
        for fid, sid, q, t, d, name in catalog.conn.execute(
            "SELECT file_id, signal_id, query_match_pct, target_match_pct, distance, list_name"
            " FROM matches WHERE signal_type = 'vpdq'"
        )
    }


def _outcome(result) -> tuple:
    new = sorted((m.file_id, m.signal_id, m.distance, m.list_name, m.query_match_pct,
                  m.target_match_pct, tuple(m.labels), m.hash_hex) for m in result.new)  # fmt: skip
    gone = sorted((r.match.file_id, r.match.signal_id, r.reason) for r in result.retracted)
    return new, gone, result.summary.new_matches, result.summary.retractions


#: a copy of video 0 with 3 of its 10 frames under the floor and two repeated: its
#: percentages are vPDQ's only if the rescan drops the dim frames and the repeats
DIM_COPY = [([("ingest", "a", [(0, 1.0, 0, 2, 3, 0, True, 1)])], 1)]
#: one frame of ten shared: no match (a rescan reported a 10% "match")
ONE_FRAME = [([("ingest", "b", [(1, 0.1, 0, 0, 0, 9, True, 2)])], 3)]


@settings(max_examples=25, deadline=None)
@given(plan=rounds)
@example(plan=DIM_COPY)
@example(plan=ONE_FRAME)
def test_rescan_holds_what_a_fresh_match_finds_locally_and_through_a_server(scanned, plan):
    catalog_path, videos = scanned
    with two_copies_and_a_server(catalog_path, "rescan-video-property-") as (tmp, ts, local,
                                                                             remote):  # fmt: skip
        client = ts.client("admin")
        before: dict = {}
        for ops, page_size in plan:
            for op in ops:
                _apply(ts.engine, op, videos)
            mine = rescan(local, ts.engine.store, cache_dir=tmp / "cache-local")
            theirs = rescan(remote, ServerChanges(client, ts.target, page_size=page_size),
                            cache_dir=tmp / "cache-remote")  # fmt: skip
            held = _held(local)
            expected = _fresh(ts.engine, local)
            # exactly what a fresh match finds; new ones with its numbers
            assert held.keys() == expected.keys()
            for m in mine.new:
                assert held[(m.file_id, m.signal_id)] == expected[(m.file_id, m.signal_id)]
            # the report is the difference from before
            assert {(m.file_id, m.signal_id) for m in mine.new} == held.keys() - before.keys()
            assert {(r.match.file_id, r.match.signal_id)
                    for r in mine.retracted} == before.keys() - held.keys()  # fmt: skip
            # the server, in pages of any size, reads the same
            assert _outcome(theirs) == _outcome(mine), page_size
            assert _held(remote) == held
            before = held
