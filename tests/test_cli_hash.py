"""``hashmatch hash``: records per file and type, formats, error records, exit status."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.server.cli import cli

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "sub").mkdir()
    Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(skimage.data.camera()).save(root / "sub" / "camera.jpg", quality=90)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["hash", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def test_jsonl_one_record_per_file_and_type(tree: Path):
    code, out = run(str(tree), "--types", "pdq,phash,md5")
    records = [json.loads(line) for line in out.splitlines()]
    good = [r for r in records if "error" not in r]
    bad = [r for r in records if "error" in r]
    assert code == 0
    assert {(Path(r["path"]).name, r["type"]) for r in good} == {
        (n, t) for n in ("astronaut.png", "camera.jpg") for t in ("pdq", "phash", "md5")
    }
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg")
    assert bad[0]["reason"] == "CorruptMedia" and "JPEG" in bad[0]["error"]
    astro = {r["type"]: r for r in good if r["path"].endswith("astronaut.png")}
    assert astro["phash"]["hash"] == str(imagehash.phash(Image.open(tree / "astronaut.png")))
    assert astro["pdq"]["hash"] == hash_media(tree / "astronaut.png", ["pdq"])[0].hex
    assert astro["pdq"]["quality"] == 100


def test_csv_and_dihedral(tree: Path):
    code, out = run(str(tree / "astronaut.png"), "--types", "pdq", "--dihedral", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 8
    expected = hash_media(tree / "astronaut.png", ["pdq"], HashOptions(dihedral=True))[0]
    assert [r["hash"] for r in rows] == [bytes(c).hex() for c in expected.codes]
    assert [r["frame"] for r in rows] == [str(i) for i in range(8)]


def test_te_format_and_reference_resize(tree: Path):
    big = tree / "sub" / "camera.jpg"  # 512x512: make a larger copy for the resize rule
    large = tree / "large.png"
    Image.open(big).resize((900, 700)).save(large)
    _, plain = run(str(large), "--types", "pdq,md5", "--format", "te")
    _, small = run(str(large), "--types", "pdq", "--format", "te", "--reference-resize")
    header, *rows = csv.reader(io.StringIO(plain))
    assert header == ["signal_type", "signal_value"] and [r[0] for r in rows] == ["pdq", "md5"]
    assert rows[0][1] == hash_media(large, ["pdq"])[0].hex
    expected = hash_media(large, ["pdq"], HashOptions(reference_resize=True))[0].hex
    assert small.splitlines()[1:] == [f"pdq,{expected}"] and expected != rows[0][1]
    large.unlink()


def test_video_records(reference_dir: Path):
    video = str(reference_dir / "videos" / "doorknob-hd-no-bar.mp4")
    code, out = run(video, "--every-n-seconds", "2")
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and rec["type"] == "vpdq"
    assert [f["frame"] for f in rec["frames"]] == [0, 60]
    assert [f["timestamp"] for f in rec["frames"]] == [0.0, 2.0]
    _, te = run(video, "--every-n-seconds", "2", "--format", "te")
    _header, row = list(csv.reader(io.StringIO(te)))
    frames = json.loads(row[1])
    assert row[0] == "vpdq" and len(frames) == 2 and frames[0].endswith(",0.000")
    # the README shows this command's output (it showed hashes of an older conversion)
    command = "$ hashmatch hash doorknob.mp4 --every-n-seconds 2 --format te"
    shown = (PROJECT / "README.md").read_text().split(command, 1)[1].split("\n$ ", 1)[0]
    assert te.splitlines() == shown.splitlines()[1:]


def test_exit_status_nonzero_only_when_every_file_failed(tree: Path, tmp_path: Path):
    assert run(str(tree))[0] == 0
    missing = str(tmp_path / "nope.png")
    code, out = run(str(tree / "sub" / "broken.jpg"), missing)
    assert code == 1
    recs = [json.loads(line) for line in out.splitlines()]
    assert [r["reason"] for r in recs] == ["CorruptMedia", "not-found"]


def test_directories_follow_symlinks_and_never_open_a_fifo(tree: Path, tmp_path: Path):
    """The walk is scan's: a linked directory is hashed, a loop reported once, and a FIFO
    reported instead of opened (reading one blocks forever: the command used to hang)."""
    root = tmp_path / "store"
    root.mkdir()
    os.mkfifo(root / "pipe.jpg")
    (root / "linked").symlink_to(tree / "sub", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    code, out = run(str(root), "--types", "md5")
    recs = {
        Path(r["path"]).relative_to(root).as_posix(): r for r in map(json.loads, out.splitlines())
    }
    assert code == 0
    assert (
        recs["linked/camera.jpg"]["hash"]
        == hashlib.md5((tree / "sub" / "camera.jpg").read_bytes()).hexdigest()
    )
    assert recs["loop"]["reason"] == "symlink-loop"
    assert recs["pipe.jpg"]["reason"] == "not-a-file"
    assert str(root) in out  # paths keep the form given on the command line


def test_unknown_type_is_a_usage_error(tree: Path):
    result = CliRunner().invoke(cli, ["hash", str(tree), "--types", "pdq,bogus"])
    assert result.exit_code == 2 and "bogus" in result.output


def test_real_subprocess(tree: Path):
    exe = PROJECT / ".venv" / "bin" / "hashmatch"
    found = str(exe) if exe.exists() else shutil.which("hashmatch")
    argv = [found] if found else [sys.executable, "-m", "hashmatch.server.cli"]
    proc = subprocess.run(
        [*argv, "hash", str(tree / "astronaut.png"), "--types", "pdq,whash"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["type"] for r in recs] == ["pdq", "whash"]
    assert recs[1]["hash"] == str(imagehash.whash(Image.open(tree / "astronaut.png")))
    assert np.frombuffer(bytes.fromhex(recs[0]["hash"]), np.uint8).shape == (32,)


def test_bench_hashing_quick_runs_and_prints_the_table():
    """``python -m bench hashing --quick`` (CI form), limited to the cheap PDQ rows."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "hashing", "--quick", "--only", "dihedral vs"],
        capture_output=True, text=True, timeout=300, check=False, cwd=PROJECT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| PDQ dihedral vs")]
    assert len(rows) == 2 and all("costs" in r for r in rows)


def test_all_frames_lists_every_frame(tmp_path: Path):
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    code, out = run(str(path), "--types", "pdq", "--all-frames")
    assert code == 0
    (rec,) = [json.loads(line) for line in out.splitlines()]
    expected = hash_media(path, ["pdq"], HashOptions(all_frames=True))[0]
    assert [f["frame"] for f in rec["frames"]] == [0, 1, 2]
    assert [f["hash"] for f in rec["frames"]] == [bytes(c).hex() for c in expected.codes]
    assert rec["hash"] == rec["frames"][0]["hash"]
    code, out = run(str(path), "--types", "pdq", "--all-frames", "--format", "te")
    assert out.splitlines()[1:] == [f"pdq,{f['hash']}" for f in rec["frames"]]


def test_a_file_no_requested_type_applies_to_says_what_to_add(tmp_path: Path):
    """`hash photo.jpg --types vpdq` said only "no requested type applies", leaving the
    reader to find that vpdq hashes videos and the photo types images."""
    photo = tmp_path / "photo.jpg"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    code, out = run(str(photo), "--types", "vpdq")
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and rec["reason"] == "NoApplicableType"
    assert rec["error"] == "no requested type applies to an image (vpdq): add pdq to --types"
    readme = " ".join((PROJECT / "README.md").read_text().split())
    assert f"`{rec['error']}`" in readme  # the README quotes it
