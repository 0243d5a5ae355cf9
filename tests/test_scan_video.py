"""Videos in a scan: hashed with vPDQ when ``vpdq`` is among the types, matched by the
vPDQ rule (query / target frame percentages), found again retroactively by rescan.

The stored signals are the reference vPDQ hash files (../shared/reference), so the
stored side does not depend on our hasher.
"""

from __future__ import annotations

import json
import shutil

import pytest

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.ingest import read_records
from hashmatch.engine.rescan import rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan
from hashmatch.engine.store import video_key

pytestmark = pytest.mark.reference


def test_videos_scan_with_vpdq_and_rescan_finds_a_newly_shared_video(reference_dir, tmp_path):
    videos, hashes = reference_dir / "videos", reference_dir / "vpdq-hashes"
    tree = tmp_path / "tree"
    tree.mkdir()
    # another edit (grey bar vs small logo) of the shared video, and an unrelated one
    shutil.copy(videos / "pattern-sd-grey-bar.mp4", tree / "upload-1.mp4")
    shutil.copy(videos / "test-padded-dimensions.mp4", tree / "upload-2.mp4")
    data_dir = tmp_path / "data"
    with Engine.open(data_dir, eager=False) as engine:
        engine.ingest(
            read_records(hashes / "pattern-sd-with-small-logo-bar.txt"), list_name="videos"
        )

    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(data_dir)
    summary = scan([tree], catalog=catalog, matcher=matcher, report=tmp_path / "r.jsonl",
                   options=ScanOptions(types=("vpdq", "pdq"), workers=0,
                                       progress=False))  # fmt: skip
    matcher.close()
    assert summary.hashed == 2 and summary.failed == 0
    assert catalog.stats()["hashes"].keys() == {"vpdq"}  # pdq does not apply to videos
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    (match,) = [r for r in records if r["kind"] == "match"]
    assert match["file"] == str(tree / "upload-1.mp4")
    assert match["type"] == "vpdq"
    assert match["external_id"] == "pattern-sd-with-small-logo-bar"
    assert match["query_match_pct"] >= 50 and 0 < match["target_match_pct"] <= 100
    assert match["distance"] <= 31
    (frames,) = catalog.hashes_of([1])[1]
    assert match["hash"] == video_key(frames.codes).hex()

    # later, the other video is shared: a rescan finds the stored copy, no hashing
    calls = catalog.counter("hash_calls")
    with Engine.open(data_dir, eager=False) as engine:
        rescan(catalog, engine.store, since=0)  # catch up (nothing new)
        engine.ingest(read_records(hashes / "test-padded-dimensions.txt"), list_name="videos")
        result = rescan(catalog, engine.store)
    (new,) = result.new
    assert catalog.path_of([new.file_id])[new.file_id] == str(tree / "upload-2.mp4")
    assert new.signal_type == "vpdq" and new.query_match_pct >= 50
    assert new.target_match_pct > 0 and new.distance <= 31
    assert catalog.counter("hash_calls") == calls
    catalog.close()


def test_scan_video_frame_limit_is_its_own_and_set_by_option(reference_dir, tmp_path):
    """The server's 10k sampled frames (2 h 46 min at 1/s) would refuse films in a store
    scan; the scan has its own limit (100k), and a video over it is a recorded failure."""
    from click.testing import CliRunner

    from hashmatch.engine.decode import DEFAULT_LIMITS
    from hashmatch.server.cli import cli

    assert ScanOptions().max_video_frames == 100_000 > DEFAULT_LIMITS.max_frames
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(reference_dir / "videos" / "pattern-sd-grey-bar.mp4", tree / "long.mp4")
    report = tmp_path / "r.jsonl"
    result = CliRunner().invoke(
        cli,
        ["scan", str(tree), "--types", "vpdq", "--no-match", "--workers", "0",
         "--catalog", str(tmp_path / "c.sqlite"), "--out", str(report),
         "--max-video-frames", "2", "--no-progress"],
    )  # fmt: skip
    (failure,) = [json.loads(x) for x in report.read_text().splitlines() if '"failure"' in x]
    assert failure["file"] == str(tree / "long.mp4"), result.output
    assert "2-frame limit" in failure["error"]
