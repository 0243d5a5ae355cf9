"""libjpeg's warnings about corrupt JPEG data it decodes past, in a scan.

libjpeg prints them with ``fprintf(stderr, ...)`` in the worker processes: straight to
fd 2, past Python's ``sys.stderr``, so they landed in the middle of the scan's progress
and log lines, naming no file. They now go with their file: a ``warning`` record in the
report, ``decoded_with_warnings`` in the summary, and nothing on the scan's stderr.
Real scan in a real subprocess, real (generated) JPEGs.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import cv2
import pytest
from skimage import data

CLI = "from hashmatch.server.entry import main; main()"


def _jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("workers", ["1", "0"])
def test_libjpeg_warnings_go_to_the_report_not_to_stderr(tmp_path, workers):
    """--workers 0 (hashed in the scan's own process) too: its warnings went to the
    terminal, naming no file, and the report had no warning records."""
    good = _jpeg()
    sos = good.index(b"\xff\xda")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.jpg").write_bytes(good)
    # 3 stray bytes before the start-of-scan marker: decoded, libjpeg warns
    (tree / "extraneous.jpg").write_bytes(good[:sos] + b"\x01\x02\x03" + good[sos:])
    # cut in the middle of the entropy-coded data, end marker kept: decoded (grey rest)
    (tree / "truncated.jpg").write_bytes(good[: len(good) // 2] + b"\xff\xd9")
    report = tmp_path / "r.jsonl"
    args = ["scan", str(tree), "--data-dir", str(tmp_path / "data"), "--no-match", "--types",
            "pdq", "--workers", workers, "--no-progress", "--out", str(report)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "JPEG" not in done.stderr, done.stderr  # no libjpeg text over the progress lines
    records = [json.loads(line) for line in report.read_text().splitlines()]
    warned = {r["file"]: r["warnings"] for r in records if r["kind"] == "warning"}
    assert warned == {
        str(tree / "extraneous.jpg"): ["Corrupt JPEG data: 3 extraneous bytes before marker 0xda"],
        str(tree / "truncated.jpg"): ["Corrupt JPEG data: premature end of data segment"],
    }
    (summary,) = [r for r in records if r["kind"] == "summary"]
    assert summary["decoded_with_warnings"] == 2
    assert summary["hashed"] == 3 and summary["failed"] == 0
    assert json.loads(done.stderr.strip().splitlines()[0])["decoded_with_warnings"] == 2


def test_the_warned_files_held_for_the_report_are_bounded(tmp_path, monkeypatch):
    """The warned files waited in memory for the report, every one (~300 B each: a
    store of millions of re-encoded JPEGs could warn on millions). The first
    MAX_WARNED_LISTED are listed; the rest are counted (decoded_with_warnings exact,
    warnings_not_listed says how many lack a record)."""
    from hashmatch.engine import scan as scan_module
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.scan import ScanOptions, scan

    monkeypatch.setattr(scan_module, "MAX_WARNED_LISTED", 2, raising=False)
    good = _jpeg()
    sos = good.index(b"\xff\xda")
    tree = tmp_path / "tree"
    tree.mkdir()
    for n in range(1, 5):  # n stray bytes before the start-of-scan marker: libjpeg warns
        (tree / f"w{n}.jpg").write_bytes(good[:sos] + b"\x01" * n + good[sos:])
    report = tmp_path / "r.jsonl"
    opts = ScanOptions(workers=1, progress=False, types=("pdq",), file_timeout=None)
    with Catalog(tmp_path / "c.sqlite") as cat:
        summary = scan([tree], catalog=cat, matcher=None, report=report, options=opts)
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len([r for r in records if r["kind"] == "warning"]) == 2
    assert summary.decoded_with_warnings == 4 and summary.warnings_not_listed == 2
    assert records[-1]["decoded_with_warnings"] == 4
    assert records[-1]["warnings_not_listed"] == 2


def test_a_re_run_reports_the_warnings_of_the_files_it_skips(tmp_path):
    """The warnings were of the files the run decoded, held in memory: a re-run that
    skipped an unchanged file (and the run resuming a stopped or killed scan) had no
    warning record for it, its report not the one an uninterrupted run writes. The
    catalog keeps them with the file; a file decoded again without damage drops its."""
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.scan import ScanOptions, scan

    good = _jpeg()
    sos = good.index(b"\xff\xda")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.jpg").write_bytes(good)
    for n in (1, 2):
        (tree / f"w{n}.jpg").write_bytes(good[:sos] + b"\x01" * n + good[sos:])
    opts = ScanOptions(workers=0, progress=False, types=("pdq",), file_timeout=None)

    def run(name: str) -> tuple[dict, dict]:
        report = tmp_path / name
        with Catalog(tmp_path / "c.sqlite") as cat:
            scan([tree], catalog=cat, matcher=None, report=report, options=opts)
        records = [json.loads(line) for line in report.read_text().splitlines()]
        warned = {r["file"]: r["warnings"] for r in records if r["kind"] == "warning"}
        return warned, records[-1]

    first, _ = run("first.jsonl")
    assert sorted(first) == [str(tree / "w1.jpg"), str(tree / "w2.jpg")]
    again, summary = run("again.jsonl")
    assert summary["hashed"] == 0 and summary["skipped_unchanged"] == 3
    assert again == first and summary["decoded_with_warnings"] == 2
    sha = dataclasses.replace(opts, types=("sha256",))  # a digest decodes nothing: kept
    with Catalog(tmp_path / "c.sqlite") as cat:
        assert scan([tree], catalog=cat, matcher=None, options=sha).hashed == 3
    assert run("after-sha.jsonl")[0] == first
    (tree / "w1.jpg").write_bytes(good)  # mended: decoded again, its warning gone
    mended, summary = run("mended.jsonl")
    assert summary["hashed"] == 1 and summary["decoded_with_warnings"] == 1
    assert mended == {str(tree / "w2.jpg"): first[str(tree / "w2.jpg")]}


def test_a_changed_files_old_warnings_go_with_its_old_hashes(tmp_path):
    """A digest-only hash (--types sha256 or md5: nothing decoded) keeps the warnings of
    the file's last decode while that decode's hashes are kept (same bytes), but a file
    whose bytes changed has those hashes dropped: its warnings went on being reported,
    of bytes no longer there and never decoded. Now they go with the hashes."""
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.scan import ScanOptions, scan

    good = _jpeg()
    sos = good.index(b"\xff\xda")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "w.jpg").write_bytes(good[:sos] + b"\x01\x02" + good[sos:])
    opts = ScanOptions(workers=0, progress=False, types=("pdq",), file_timeout=None)

    def run(options: ScanOptions) -> tuple[dict, dict]:
        report = tmp_path / "r.jsonl"
        with Catalog(tmp_path / "c.sqlite") as cat:
            scan([tree], catalog=cat, matcher=None, report=report, options=options)
        records = [json.loads(line) for line in report.read_text().splitlines()]
        warned = {r["file"]: r["warnings"] for r in records if r["kind"] == "warning"}
        return warned, records[-1]

    assert list(run(opts)[0]) == [str(tree / "w.jpg")]
    sha = dataclasses.replace(opts, types=("sha256",))
    assert list(run(sha)[0]) == [str(tree / "w.jpg")]  # same bytes: its pdq stays, and they
    (tree / "w.jpg").write_bytes(good)  # other bytes: the damaged decode's pdq is dropped
    warned, summary = run(sha)
    assert summary["hashed"] == 1
    assert (warned, summary["decoded_with_warnings"]) == ({}, 0)
    with Catalog(tmp_path / "c.sqlite") as cat:
        (rec,) = cat.lookup([str(tree / "w.jpg")]).values()
    assert rec.types == ("sha256",)


def test_a_killed_scan_resumes_to_the_warning_records_of_an_uninterrupted_one(tmp_path):
    """The run resuming a scan killed with SIGKILL skips the files the killed run
    committed: their warnings were of the run that decoded them, held in memory, and the
    resumed report had no warning record for them. Now it is the uninterrupted run's
    report, record for record. A real scan subprocess, killed once its warned files are
    committed (its list still open), resumed, and a fresh scan of the same list."""

    from scan_tree import committed_files, kill_listed_scan_once

    good = _jpeg()
    sos = good.index(b"\xff\xda")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.jpg").write_bytes(good)
    for n in (1, 2, 3):
        (tree / f"w{n}.jpg").write_bytes(good[:sos] + b"\x01" * n + good[sos:])
    first = [tree / "w1.jpg", tree / "w2.jpg"]  # the killed run's
    names = "".join(f"{p}\n" for p in sorted(tree.iterdir())).encode()

    def args(catalog: str, report: str) -> list[str]:
        return [sys.executable, "-c", CLI, "scan", "--from-list", "-", "--no-match",
                "--types", "pdq", "--workers", "1", "--batch-size", "1", "--no-progress",
                "--data-dir", str(tmp_path / "data"), "--catalog", str(tmp_path / catalog),
                "--out", str(tmp_path / report)]  # fmt: skip

    kill_listed_scan_once(  # once the two files are committed
        args("k.sqlite", "k.jsonl"), first,
        lambda: committed_files(tmp_path / "k.sqlite") >= len(first),
        tmp_path / "killed-stderr.txt",
    )  # fmt: skip
    assert not (tmp_path / "k.jsonl").exists()

    def run(catalog: str, report: str) -> tuple[list[dict], dict]:
        done = subprocess.run(args(catalog, report), input=names, capture_output=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        records = [json.loads(line) for line in (tmp_path / report).read_text().splitlines()]
        return records[:-1], records[-1]

    resumed, resumed_summary = run("k.sqlite", "k.jsonl")
    fresh, fresh_summary = run("f.sqlite", "f.jsonl")
    assert (resumed_summary["hashed"], resumed_summary["skipped_unchanged"]) == (2, 2)
    assert [r["file"] for r in fresh if r["kind"] == "warning"] == [
        str(tree / f"w{n}.jpg") for n in (1, 2, 3)
    ]
    assert resumed == fresh
    assert resumed_summary["decoded_with_warnings"] == fresh_summary["decoded_with_warnings"] == 3
