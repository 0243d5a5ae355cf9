"""Videos through the ``hashmatch`` CLI: vPDQ hash files as match queries (run through
click against a real data dir)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from hashmatch.engine.store import video_key
from hashmatch.engine.video import format_vpdq

RNG = np.random.default_rng(7)
FRAMES = RNG.integers(0, 256, (6, 32), dtype=np.uint8)  # one video: 6 frames, 1 a second
OTHER = RNG.integers(0, 256, (6, 32), dtype=np.uint8)  # an unrelated video


def _vpdq_text(frames: np.ndarray) -> str:
    n = len(frames)
    return format_vpdq(range(n), [100] * n, frames, [float(i) for i in range(n)])


def _te_json(frames: np.ndarray) -> str:
    """python-threatexchange's vpdq_to_json (VpdqCompactFeature.__str__: ``{:.3}``)."""
    return json.dumps([f"{bytes(c).hex()},100,{float(i):.3}" for i, c in enumerate(frames)])


@pytest.fixture
def stored(run, tmp_path) -> Path:
    """A store whose list 'videos' holds FRAMES as video 'clip'."""
    clip = tmp_path / "clip.vpdq"
    clip.write_text(_vpdq_text(FRAMES))
    run("ingest", str(clip), "--list", "videos")
    return clip


@pytest.mark.parametrize(
    "name, text",
    [
        ("copy.vpdq", _vpdq_text(FRAMES)),  # vpdq's text format
        ("copy.txt", _vpdq_text(FRAMES)),  # the same, recognised by its lines
        ("copy.json", _te_json(FRAMES)),  # python-threatexchange's serialized list
        ("copy.out", "vpdq " + _te_json(FRAMES) + "\n"),  # as `threatexchange hash` prints it
        ("copy.json", json.dumps(json.loads(_te_json(FRAMES)), indent=2)),  # indented
    ],
)
def test_match_of_a_vpdq_hash_file_matches_its_frames_as_one_video(
    run, stored, tmp_path, name, text
):
    query = tmp_path / name
    query.write_text(text)
    out = json.loads(run("match", str(query), "--json").output)
    (match,) = out[0]["matches"]
    assert (match["external_id"], match["list_name"]) == ("clip", "videos")
    assert (match["query_match_pct"], match["target_match_pct"]) == (100.0, 100.0)
    # the video as the store names it (SHA-256 of its frame codes), not its first frame
    assert out[0]["hashes"] == [f"vpdq:{video_key(FRAMES).hex()}"]
    assert match["hash_hex"] == video_key(FRAMES).hex()


@pytest.mark.parametrize(
    "name, data",
    [
        ("copy.txt", ("# vpdq of copy.mp4\n" + _vpdq_text(FRAMES)).encode()),  # a comment first
        ("copy.vpdq.gz", gzip.compress(_vpdq_text(FRAMES).encode())),  # gzip, as ingest reads
    ],
)
def test_match_recognises_a_vpdq_hash_file_as_ingest_does(run, stored, tmp_path, name, data):
    """``match`` kept its own copy of ingest's format detection (the first line, no gzip):
    after ingest learnt to look past ``#`` comments and through gzip, such a file ingested
    as a video but ``match`` hashed it as a photo ('not an image in a supported format')."""
    query = tmp_path / name
    query.write_bytes(data)
    ingested = run("ingest", str(query), "--list", "videos").output
    assert "added 0, updated 1" in ingested  # clip's video, named copy now
    out = json.loads(run("match", str(query), "--json").output)
    (match,) = out[0]["matches"]
    assert (match["list_name"], match["query_match_pct"]) == ("videos", 100.0)
    assert out[0]["hashes"] == [f"vpdq:{video_key(FRAMES).hex()}"]


def test_match_of_an_unrelated_vpdq_hash_file_finds_nothing(run, stored, tmp_path):
    query = tmp_path / "other.vpdq"
    query.write_text(_vpdq_text(OTHER))
    assert "other.vpdq [vpdq:" in run("match", str(query)).output
    assert "1 quer(ies), 0 match(es)" in run("match", str(query)).output


def test_a_bad_vpdq_hash_file_is_one_line_naming_file_and_line(run, stored, tmp_path):
    bad = tmp_path / "bad.vpdq"
    bad.write_text(_vpdq_text(FRAMES) + "6,100,zz,6.000\n")
    out = run("match", str(bad), code=1).output
    assert out.strip().splitlines() == [
        f"Error: {bad}: not a vPDQ hash file: line 7: PDQ hash must be 64 hex characters"
    ]
    bad.write_text(_vpdq_text(FRAMES).replace(",100,", ",101,", 1))
    assert "line 1: quality 101 not in 0..100" in run("match", str(bad), code=1).output
    bad.write_text(_te_json(FRAMES).replace(",100,", ",101,", 1))
    assert (
        "frame_qualities[0]: quality must be 0..100, got 101"
        in run("match", str(bad), code=1).output
    )


@pytest.mark.parametrize("name", ["clip.vpdq", "hashes.json", "copy.txt"])
def test_a_mistyped_hash_file_name_is_no_such_file_not_a_bad_hash(run, stored, name):
    """The README's `hashmatch match clip.vpdq` with a file not there (run in the wrong
    directory) said 'pdq hash must be 64 hex characters, got 9'."""
    out = run("match", name, code=1).output
    assert out.strip().splitlines() == [f"Error: {name}: no such file"]
    assert "hex characters" in run("match", "pdq:abc", code=1).output  # a hash stays one


def test_ingest_reads_python_threatexchange_serialized_vpdq_as_one_video(run, stored, tmp_path):
    te = tmp_path / "clip.json"
    te.write_text(_te_json(FRAMES))
    out = run("ingest", str(te), "--list", "videos").output
    assert "updated 0, unchanged 1" in out  # the same video as clip.vpdq (same external id)


def test_reference_vpdq_text_files_match_as_the_reference_groups(run, reference_dir, tmp_path):
    hashes = reference_dir / "vpdq-hashes"
    stored = tmp_path / "chair-20-sd-bar.txt"
    shutil.copy(hashes / "chair-20-sd-bar.txt", stored)
    run("ingest", str(stored), "--list", "videos", "--format", "vpdq")
    same = json.loads(run("match", str(hashes / "chair-19-sd-bar.txt"), "--json").output)
    assert [m["external_id"] for m in same[0]["matches"]] == ["chair-20-sd-bar"]
    assert same[0]["matches"][0]["query_match_pct"] >= 80
    other = json.loads(run("match", str(hashes / "doorknob-hd-no-bar.txt"), "--json").output)
    assert other[0]["matches"] == []


def write_video(
    path: Path, frames: int = 30, fps: float = 10.0, size=(96, 64), seed=0, fourcc: str = "mp4v"
) -> Path:
    """A benign generated clip: a smooth random background with a moving disc."""
    import cv2

    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
    for i in range(frames):
        frame = base.copy()
        cv2.circle(frame, (int(w / 2 + w / 3 * np.sin(i / 5)), h // 2), h // 5, (255,) * 3, -1)
        writer.write(frame)
    writer.release()
    return path


def test_match_of_a_video_file_hashes_it_as_vpdq_by_default(run, tmp_path):
    clip = write_video(tmp_path / "clip.mp4")
    listed = tmp_path / "listed.csv"
    listed.write_text(run("hash", str(clip), "--format", "te").output)
    run("ingest", str(listed), "--list", "videos")
    out = json.loads(run("match", str(clip), "--json").output)
    assert out[0]["hashes"][0].startswith("vpdq:")
    assert [m["query_match_pct"] for m in out[0]["matches"]] == [100.0]


@pytest.mark.parametrize("fmt", ["te", "jsonl"])
def test_match_of_what_hash_writes_for_a_video_matches_it_as_the_video(run, tmp_path, fmt):
    """``hashmatch hash clip.mp4 --format te`` (HMA's CSV: the frame list as the row's
    value) and ``hash``'s default JSONL were refused by ``match`` ("not an image in a
    supported format"), though ``ingest`` reads both as the video."""
    clip = write_video(tmp_path / "clip.mp4", frames=20)
    listed = tmp_path / f"clip.{'csv' if fmt == 'te' else 'jsonl'}"
    listed.write_text(run("hash", str(clip), "--format", fmt).output)
    run("ingest", str(listed), "--list", "videos")
    by_file = json.loads(run("match", str(clip), "--json").output)[0]
    by_hashes = json.loads(run("match", str(listed), "--json").output)[0]
    assert by_hashes["hashes"] == by_file["hashes"]  # the same video, named alike
    assert [m["query_match_pct"] for m in by_hashes["matches"]] == [100.0]
    assert by_hashes["matches"] == by_file["matches"]


def test_match_refuses_other_hash_lists_saying_what_to_give(run, tmp_path):
    """A hash list that is not one video's vPDQ: the refusal says what match takes
    (before: "not an image in a supported format", as if it were a damaged photo)."""
    clip = write_video(tmp_path / "clip.mp4", frames=20)
    te = run("hash", str(clip), "--format", "te").output
    (tmp_path / "clip.csv").write_text(te)
    run("ingest", str(tmp_path / "clip.csv"), "--list", "videos")
    two = tmp_path / "two.csv"
    two.write_text(te + te.splitlines()[1] + "\n")
    out = run("match", str(two), code=1).output
    assert "a hash list (csv) of several signals; match takes one video's vPDQ" in out
    one_pdq = tmp_path / "photo.csv"
    one_pdq.write_text(f"signal_type,signal_value\npdq,{'ab' * 32}\n")
    out = run("match", str(one_pdq), code=1).output
    assert f"holds one pdq hash, not media nor a video's vPDQ: match it as pdq:{'ab' * 32}" in out
    bad = tmp_path / "bad.csv"
    bad.write_text('signal_type,signal_value\nvpdq,"[""zz,100,0.0""]"\n')
    out = run("match", str(bad), code=1).output
    assert "bad.csv: not a vPDQ hash file: line 2: " in out and "got 'zz,100,0.0'" in out


def test_an_ogv_is_a_video_to_hash_match_and_scan_alike(run, tmp_path):
    """``scan`` kept its own extension list (``.ogv`` a video), ``hash``/``match`` another
    (``.ogv`` a photo: 'looks like a video'), and FFmpeg's demuxer whitelist had no Ogg,
    so no command could hash one as a video. Now one table (engine.video_formats)."""
    from hashmatch.engine.scan import types_for
    from hashmatch.engine.video_formats import VIDEO_EXTENSIONS
    from hashmatch.server.commands.hashing import applicable

    for ext in [*VIDEO_EXTENSIONS, ".OGV", ".png", ""]:
        assert types_for(f"a{ext}", ["pdq", "vpdq"]) == tuple(
            applicable(f"a{ext}", ["pdq", "vpdq"])
        )
    media = tmp_path / "media"
    media.mkdir()
    clip = write_video(media / "clip.ogv", fourcc="VP80")  # VP8 in an Ogg container
    assert clip.read_bytes()[:4] == b"OggS"
    rec = json.loads(run("hash", str(clip)).output)
    assert rec["type"] == "vpdq" and len(rec["frames"]) == 3, rec
    listed = tmp_path / "listed.csv"
    listed.write_text(run("hash", str(clip), "--format", "te").output)
    run("ingest", str(listed), "--list", "videos")
    out = json.loads(run("match", str(clip), "--json").output)
    assert [m["query_match_pct"] for m in out[0]["matches"]] == [100.0]
    report = tmp_path / "report.jsonl"
    run("scan", str(media), "--types", "vpdq", "--workers", "0", "--out", str(report))
    kinds = [json.loads(x)["kind"] for x in report.read_text().splitlines()]
    assert kinds == ["match", "summary"], report.read_text()


def test_hash_and_match_of_a_video_stop_at_the_file_timeout(run, tmp_path):
    """``scan --file-timeout`` bounded a pathological video; ``hash`` and ``match`` of
    one had no limit and could hold an analyst's command forever. A microsecond is over
    before the first frame is decoded; a photo (one decode) is not bounded by it."""
    clip = write_video(tmp_path / "clip.mp4")
    photo = tmp_path / "photo.png"
    photo.write_bytes(cv2.imencode(".png", np.full((64, 64, 3), 90, np.uint8))[1].tobytes())
    listed = tmp_path / "listed.csv"
    listed.write_text(run("hash", str(clip), "--format", "te").output)
    run("ingest", str(listed), "--list", "videos")
    out = run("hash", str(clip), str(photo), "--file-timeout", "0.000001").output
    video, *photos = [json.loads(x) for x in out.splitlines()]
    assert video["reason"] == "FileTimedOut", video
    assert "longer than the 1e-06 s per-file limit" in video["error"]
    assert photos and all("error" not in p for p in photos)
    stopped = run("match", str(clip), "--file-timeout", "0.000001", code=1).output
    assert f"{clip}: hashing took longer than the 1e-06 s per-file limit" in stopped
    assert "1 match(es)" in run("match", str(clip)).output  # the default: an hour


def test_hash_jsonl_of_a_video_ingests_as_the_te_output_does(run, tmp_path):
    clip = write_video(tmp_path / "clip.mp4")
    as_jsonl = tmp_path / "clip.jsonl"
    as_jsonl.write_text(run("hash", str(clip)).output)
    as_te = tmp_path / "clip.csv"
    as_te.write_text(run("hash", str(clip), "--format", "te").output)
    assert (
        "added 1, updated 0, unchanged 0, rejected 0"
        in run("ingest", str(as_jsonl), "--list", "videos").output
    )
    # the same signal: frames, frame qualities and times (no video-level quality)
    assert "added 0, updated 0, unchanged 1" in run("ingest", str(as_te), "--list", "videos").output
    out = json.loads(run("match", str(clip), "--json").output)
    assert [m["query_match_pct"] for m in out[0]["matches"]] == [100.0]


def test_match_names_the_file_that_cannot_be_hashed(run, stored, tmp_path):
    clip = write_video(tmp_path / "clip.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:2000])  # an upload cut before its moov index
    out = run("match", str(clip), str(cut), code=1).output
    assert out.strip().splitlines() == [
        f"Error: {cut}: media: an MP4/MOV container FFmpeg cannot open (truncated or damaged?)"
    ]
