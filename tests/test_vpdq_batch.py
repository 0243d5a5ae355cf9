"""vPDQ matches in batches (engine/video_join.py) give exactly the old per-video results.

The old path made one engine call per query video (a Match's vPDQ hash rows: one per
row), read each nominated stored video from SQLite and deduped its frames with
``np.unique`` per candidate. The batched path searches many videos' frames at once,
reads and prepares each nominee once and scores all of a video's nominees together.
The oracle below is the old rule written out brute force, over every stored video
(not the index): nominated when some frame pair (any quality) is within the threshold,
``distance`` = the nearest pair, scored by python-threatexchange's rule with
``np.unique``'s dedupe (first frame of a repeated hash kept, then the quality floor),
kept when query % >= 80, sorted by query %, target %, signal id.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.engine.video_join import first_occurrences

FLOOR = 50  # python-threatexchange's VPDQ_QUALITY_THRESHOLD


def _old_prepare(codes: np.ndarray, qualities: list | None) -> np.ndarray:
    """The frames vPDQ compares, as the old code found them (np.unique's first rows)."""
    keep = np.zeros(len(codes), dtype=bool)
    if len(codes):
        keep[np.unique(codes, axis=0, return_index=True)[1]] = True
    if qualities is not None and None not in qualities:
        keep &= np.asarray(qualities) >= FLOOR
    return codes[keep]


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)


def _oracle(stored: dict, query: np.ndarray, qualities: list | None, threshold: int) -> list:
    """(signal id, distance, query %, target %) of every match, in the engine's order."""
    found = []
    for sid, (codes, t_quals) in stored.items():
        nearest = int(_distances(query, codes).min())
        if nearest > threshold:
            continue  # the index nominates a video only through a frame hit
        q, t = _old_prepare(query, qualities), _old_prepare(codes, t_quals)
        if len(q) == 0 or len(t) == 0:
            continue
        d = _distances(q, t) <= threshold
        qpct = 100.0 * d.any(axis=1).sum() / len(q)
        tpct = 100.0 * d.any(axis=0).sum() / len(t)
        if qpct >= 80:
            found.append((sid, nearest, float(qpct), float(tpct)))
    return sorted(found, key=lambda m: (-m[2], -m[3], m[0]))


def _video(rng: np.random.Generator, k: int) -> tuple[np.ndarray, list | None]:
    """A few scenes, repeated frames, small changes, qualities around the floor (some
    videos with unknown qualities)."""
    scenes = rng.integers(0, 256, (max(1, k // 4), 32), dtype=np.uint8)
    codes = scenes[np.sort(rng.integers(0, len(scenes), k))]
    flips = (rng.random((k, 32)) < 0.04) * rng.integers(0, 256, (k, 32))
    codes = codes ^ flips.astype(np.uint8)
    if rng.random() < 0.2:
        return codes, None
    return codes, rng.integers(20, 101, k).tolist()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """An engine holding random stored videos in two lists (one hidden from tenant
    'acme'), one retracted and one expired, with what each tenant may match."""
    rng = np.random.default_rng(17)
    videos = [_video(rng, int(rng.integers(1, 40))) for _ in range(40)]
    videos.append((np.zeros((3, 32), np.uint8), [90, 90, 90]))  # a frame many queries meet
    with Engine.open(tmp_path_factory.mktemp("vpdq") / "d") as engine:
        for i, (codes, quals) in enumerate(videos):
            extra = {"expires_at": time.time() + 0.5} if i == 7 else {}
            engine.ingest(
                [SignalRecord("vpdq", "", external_id=f"v{i}", frames=codes,
                              frame_qualities=quals, **extra)],
                list_name="shared" if i % 3 else "private",
            )  # fmt: skip
        engine.retract(list_name="shared", external_ids=["v5"])
        engine.store.create_tenant("acme")
        engine.store.grant("acme", "shared")
        time.sleep(0.6)  # v7 expired
        ids = {s.external_id: s.id for s in engine.store.signals(limit=100)}
        live = {i: ids[f"v{i}"] for i in range(len(videos)) if i not in (5, 7)}
        admin = {sid: videos[i] for i, sid in live.items()}
        acme = {sid: videos[i] for i, sid in live.items() if i % 3}
        yield engine, videos, {None: admin, "acme": acme}


def _queries(rng: np.random.Generator, videos: list, n: int) -> list:
    """Planted (a stored video or part of it, a few bits changed, some frames repeated
    or added) and random videos, and single frames as a Match's vPDQ hash rows are."""
    out = []
    for _ in range(n):
        kind = rng.integers(0, 4)
        if kind == 3:
            out.append(_video(rng, int(rng.integers(1, 30))))
            continue
        codes = videos[int(rng.integers(0, len(videos)))][0]
        take = np.sort(rng.choice(len(codes), int(rng.integers(1, len(codes) + 1))))
        if kind == 2:
            take = take[:1]  # one frame: a hash row
        q = codes[take].copy()
        for row, flips in enumerate(rng.integers(0, 40, len(q)).tolist()):
            for b in rng.choice(256, flips, replace=False).tolist():
                q[row, b // 8] ^= 1 << (b % 8)
        if kind == 1 and len(q) > 1:
            q = np.concatenate([q, q[:1], rng.integers(0, 256, (1, 32), dtype=np.uint8)])
        out.append((q, None if rng.random() < 0.2 else rng.integers(0, 101, len(q)).tolist()))
    return out


def _key(found) -> list:
    return [(m.signal_id, m.distance, m.query_match_pct, m.target_match_pct) for m in found]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
    threshold=st.sampled_from([0, 8, 31, 48]),
    group_frames=st.sampled_from([1, 5, 64, 4096]),
    tenant=st.sampled_from([None, "acme"]),
)
def test_batched_videos_equal_the_old_per_video_results(
    library, seed, n, threshold, group_frames, tenant
):
    engine, videos, visible = library
    queries = _queries(np.random.default_rng(seed), videos, n)
    batched = engine.match_videos(
        queries, tenant=tenant, threshold=threshold, group_frames=group_frames
    )
    assert len(batched) == len(queries)
    for (codes, quals), found in zip(queries, batched, strict=True):
        expected = _oracle(visible[tenant], codes, quals, threshold)
        assert _key(found) == expected
        one = engine.match("vpdq", codes, qualities=quals, tenant=tenant, threshold=threshold)
        assert _key(one[0]) == expected
        low = quals is not None and all(q is not None and q < FLOOR for q in quals)
        assert found.skipped_low_quality == one[0].skipped_low_quality == low
        assert all(m.query_index == 0 and m.signal_type == "vpdq" for m in found)


def test_planted_rows_each_find_their_video_once(library):
    """Hash rows (one-frame videos) planted from stored videos: each row finds the
    videos the oracle finds, in one call, with labels and lists joined."""
    engine, videos, visible = library
    rows = [(codes[j : j + 1], None) for codes, _ in videos for j in range(len(codes))]
    batched = engine.match_videos(rows, max_results=2)
    assert sum(len(f) for f in batched) > len(videos)
    for (codes, quals), found in zip(rows, batched, strict=True):
        assert _key(found) == _oracle(visible[None], codes, quals, 31)[:2]
        assert all(m.list_name in ("shared", "private") for m in found)


def test_the_checkpoint_runs_before_every_video_and_stops_the_rest(library):
    """The server's deadline / cancel check between rows: called once per video, and
    its exception ends the call (no more videos are scored)."""
    engine, videos, _ = library
    queries = [(codes, quals) for codes, quals in videos for _ in range(3)]
    calls = []
    engine.match_videos(queries, checkpoint=lambda: calls.append(1), group_frames=50)
    assert len(calls) == len(queries)

    class Stop(Exception):
        pass

    def stop_at_ten() -> None:
        calls.append(1)
        if len(calls) == 10:
            raise Stop

    calls.clear()
    with pytest.raises(Stop):
        engine.match_videos(queries, checkpoint=stop_at_ten)
    assert len(calls) == 10


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.integers(0, 5), min_size=0, max_size=40),
    groups=st.lists(st.integers(0, 2), min_size=40, max_size=40),
    width=st.sampled_from([1, 2, 4]),
)
def test_first_occurrences_are_np_uniques_first_rows(rows, groups, width):
    """vPDQ's dedupe without np.unique: the same rows kept, per video when grouped."""
    rng = np.random.default_rng(len(rows))
    values = rng.integers(0, 2**64, (6, 4), dtype=np.uint64)
    values[:, width:] = 0  # rows differing in any of the 4 words, or only the first
    words = values[rows]
    expected = np.zeros(len(rows), dtype=bool)
    if rows:
        expected[np.unique(words, axis=0, return_index=True)[1]] = True
    assert (first_occurrences(words) == expected).all()
    g = np.asarray(groups[: len(rows)], dtype=np.int64)
    per_group = np.zeros(len(rows), dtype=bool)
    for value in np.unique(g).tolist():
        at = np.flatnonzero(g == value)
        per_group[at[np.unique(words[at], axis=0, return_index=True)[1]]] = True
    assert (first_occurrences(words, g) == per_group).all()


def test_bench_vpdq_match_runs_and_both_ways_agree():
    """``python -m bench vpdq_match`` (README's table) at a small size: per-call and
    batched give the same matches (the digest of every match)."""
    project = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "vpdq_match", "--stored", "30", "--rows", "60",
         "--videos", "4", "--runs", "1"],
        capture_output=True, text=True, timeout=300, check=False, cwd=project,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| 30 |")]
    assert [r[3].strip() for r in rows] == ["per-call", "batched"] * 2
    for kind in ("rows", "videos"):
        digests = {r[6].strip() for r in rows if kind in r[2]}
        assert len(digests) == 1, proc.stdout


def test_a_servers_match_equals_one_engine_call_per_row_and_video(tmp_path):
    """A real server's Match of vPDQ hash rows (with and without quality) and videos,
    now one batched engine call: every result is what one engine call per row or video
    (the server's old loop) finds."""
    import grpc

    from hashmatch.server.client import video_signal
    from hashmatch.server.testing import running_server
    from hashmatch.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc

    rng = np.random.default_rng(5)
    stored = [_video(rng, int(rng.integers(5, 40))) for _ in range(12)]
    tenants = {"ops": (["match", "write", "admin"], True)}
    with running_server(tmp_path, tenants=tenants) as ts:
        ts.client("ops").ingest(
            "videos",
            [video_signal([c.tobytes().hex() for c in codes], qualities=quals or (),
                          external_id=f"v{i}") for i, (codes, quals) in enumerate(stored)],
        )  # fmt: skip
        queries = _queries(rng, stored, 30)
        rows = [(codes[:1], quals[:1] if quals else None) for codes, quals in queries]
        rows += [(codes[-1:], [90]) for codes, _ in stored]  # a stored frame as it is
        videos = [q for q in queries if len(q[0]) > 1][:8]
        request = matcher_pb2.MatchRequest(
            hashes=[
                common_pb2.HashValue(signal_type="vpdq", hex=codes[0].tobytes().hex(),
                                     **({"quality": quals[0]} if quals else {}))
                for codes, quals in rows
            ],
            videos=[
                matcher_pb2.VideoQuery(frames=[c.tobytes().hex() for c in codes],
                                       qualities=quals or [])
                for codes, quals in videos
            ],
        )  # fmt: skip
        stub = matcher_pb2_grpc.MatcherStub(grpc.insecure_channel(ts.target))
        reply = stub.Match(request, metadata=[("authorization", f"Bearer {ts.tokens['ops']}")])
        assert len(reply.results) == len(rows) + len(videos)
        found = 0
        for position, (result, (codes, quals)) in enumerate(
            zip(reply.results, rows + videos, strict=True)
        ):
            expected = ts.engine.match("vpdq", codes, qualities=quals)[0]
            got = [(m.signal_id, m.distance, m.query_match_pct, m.target_match_pct)
                   for m in result.matches]  # fmt: skip
            as_sent = [
                (s, d, float(np.float32(q)), float(np.float32(t))) for s, d, q, t in _key(expected)
            ]
            assert got == as_sent, position  # the reply's percentages are 32-bit floats
            assert all(m.query_index == position for m in result.matches)
            assert result.skipped_low_quality == expected.skipped_low_quality
            found += len(got)
        assert found >= len(stored)  # planted queries did match
