"""vPDQ in a rescan: a catalogued video matches a newly shared one exactly when a fresh
scan would match it (vPDQ's rule: >= 80% of the file's frames within the threshold of
the shared video's, frames under the quality floor and repeated frames ignored).

Why: the catalog index only nominates (file, video) pairs that share a frame; a rescan
used to report every nominated pair, with percentages that counted the shared video's
low-quality frames and repeats, so a video sharing one frame of ten was a "match".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hashmatch.engine.catalog import Catalog, FileHashes, MatchRow
from hashmatch.engine.rescan import ServerChanges, rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.testing import running_server

ADMIN = {"admin": (["match", "export", "write"], True)}


def frames(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


def catalog_video(catalog: Catalog, name: str, codes: np.ndarray, qualities: list[int]) -> int:
    """A catalogued video file (its frames as a scan would have stored them)."""
    hashes = [FileHashes("vpdq", codes, qualities, list(range(len(codes))))]
    with catalog.transaction():
        return catalog.put_hashed(f"/videos/{name}.mp4", size=1, mtime_ns=1, md5=None,
                                  types=["vpdq"], hashes=hashes)  # fmt: skip


def shared_video(codes: np.ndarray, qualities: list[int], name: str) -> SignalRecord:
    return SignalRecord("vpdq", "", frames=codes, frame_qualities=qualities,
                        timestamps=list(range(len(codes))), external_id=name)  # fmt: skip


def fresh_matches(engine: Engine, catalog: Catalog) -> dict[tuple[int, int], tuple]:
    """(file, signal) -> (query %, target %, distance): a from-scratch match of every
    catalogued video, as a scan matches it (the engine's vPDQ)."""
    out = {}
    file_ids = [fid for (fid,) in catalog.conn.execute("SELECT id FROM files")]
    for file_id, hashes in catalog.hashes_of(file_ids).items():
        for h in hashes:
            if h.signal_type != "vpdq":
                continue
            (found,) = engine.match("vpdq", h.codes, qualities=h.qualities)
            for m in found:
                out[(file_id, m.signal_id)] = (m.query_match_pct, m.target_match_pct, m.distance)
    return out


def held(catalog: Catalog) -> dict[tuple[int, int], tuple]:
    return {
        (fid, sid): (q, t, d)
        for fid, sid, q, t, d in catalog.conn.execute(
            "SELECT file_id, signal_id, query_match_pct, target_match_pct, distance FROM matches"
            " WHERE signal_type = 'vpdq'"
        )
    }


@pytest.fixture
def setup(tmp_path):
    catalog = Catalog(tmp_path / "catalog.sqlite")
    base = frames(1, 10)
    fid = catalog_video(catalog, "upload", base, [90] * 10)
    yield catalog, base, fid, tmp_path
    catalog.close()


def test_a_video_sharing_one_frame_of_ten_is_not_a_match(setup):
    catalog, base, _fid, tmp_path = setup
    with Engine.open(tmp_path / "data") as engine:
        one_of_ten = np.concatenate([base[:1], frames(2, 9)])
        engine.ingest([shared_video(one_of_ten, [90] * 10, "one")], list_name="videos")
        result = rescan(catalog, engine.store)
        assert fresh_matches(engine, catalog) == {}
    assert result.new == [] and held(catalog) == {}


def test_shared_frames_under_the_quality_floor_are_ignored(setup):
    """The shared video's frames 2..9 are of quality 10: vPDQ ignores them, so 2 of
    the file's 10 frames match (20%): no match, though every frame is the same."""
    catalog, base, _fid, tmp_path = setup
    with Engine.open(tmp_path / "data") as engine:
        engine.ingest([shared_video(base, [90, 90] + [10] * 8, "dim")], list_name="videos")
        result = rescan(catalog, engine.store)
        assert fresh_matches(engine, catalog) == {}
    assert result.new == [] and held(catalog) == {}


@pytest.mark.parametrize("through_server", [False, True])
def test_a_match_has_the_percentages_a_scan_gives_it(setup, through_server):
    """The shared video: the file's 10 frames, 3 of them repeated and 2 under the floor,
    plus 5 others: target% counts each repeated frame once, the dim ones not at all."""
    catalog, base, fid, tmp_path = setup
    codes = np.concatenate([base, base[:3], frames(3, 5)])
    qualities = [90] * 8 + [10, 10] + [90] * 8
    with running_server(tmp_path / "served", tenants=ADMIN) as ts:
        ts.engine.ingest([shared_video(codes, qualities, "copy")], list_name="videos")
        source = ServerChanges(ts.client("admin"), ts.target) if through_server else ts.engine.store
        result = rescan(catalog, source)
        expected = fresh_matches(ts.engine, catalog)
    ((key, (qpct, tpct, distance)),) = expected.items()
    assert key[0] == fid and qpct == 80.0 and tpct == pytest.approx(100 * 8 / 13)
    (new,) = result.new
    assert (new.file_id, new.signal_id) == key
    assert (new.query_match_pct, new.target_match_pct, new.distance) == (qpct, tpct, distance)
    assert held(catalog) == expected


def test_a_match_an_older_rescan_made_without_the_rule_goes_when_its_video_is_read_again(setup):
    """A rescan before vPDQ's rule was applied held a 10% 'match'; matches a scan made
    (the engine's rule, at the scan's threshold) are not a rescan's to re-decide. Read
    again (a relabel; or --since all), the rescan's is reported as a retraction."""
    catalog, base, fid, tmp_path = setup
    other = catalog_video(catalog, "other", frames(4, 10), [90] * 10)
    with Engine.open(tmp_path / "data") as engine:
        one_of_ten = np.concatenate([base[:1], frames(2, 9)])
        engine.ingest([shared_video(one_of_ten, [90] * 10, "one")], list_name="videos")
        rescan(catalog, engine.store)
        (info,) = engine.store.signals(limit=10)
        stale = MatchRow(fid, "vpdq", info.id, "", info.hash_hex, 0, "videos", (), "one",
                         query_match_pct=10.0, target_match_pct=10.0)  # fmt: skip
        by_scan = dataclasses.replace(stale, file_id=other)
        with catalog.transaction():
            catalog.add_matches([stale], found_by="rescan")
            catalog.add_matches([by_scan], found_by="scan")
        relabelled = dataclasses.replace(shared_video(one_of_ten, [90] * 10, "one"), labels=("x",))
        engine.ingest([relabelled], list_name="videos")
        result = rescan(catalog, engine.store)
    assert [(r.match.file_id, r.match.signal_id, r.reason) for r in result.retracted] == [
        (fid, info.id, "quality")
    ]
    assert result.new == [] and list(held(catalog)) == [(other, info.id)]
