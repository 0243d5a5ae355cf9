"""A scan killed with SIGKILL (a real subprocess) resumes and writes the same report.

The run is killed once the catalog holds some committed files; the re-run must skip
those (not hash them again), hash the rest, and produce a report identical, record for
record, to the report of an uninterrupted scan into a fresh catalog.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image
from scan_tree import committed_files
from skimage import data

from hashmatch.engine.hashing import hash_media
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

N_FILES = 100
CLI = "from hashmatch.server.cli import main; main()"


def _make_tree(root: Path) -> list[Path]:
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(7)
    paths = []
    for i in range(N_FILES):
        src = sources[i % len(sources)]
        y, x = rng.integers(0, 60, size=2)
        crop = src[y : y + 200, x : x + 200]
        path = root / f"d{i % 5}" / f"img{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=88)
        paths.append(path)
    (root / "d0" / "broken.jpg").write_bytes(paths[0].read_bytes()[:300])
    return paths


def _scan(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "scan", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _records(report: Path) -> tuple[list[str], dict]:
    lines = report.read_text().splitlines()
    summary = json.loads(lines[-1])
    assert summary["kind"] == "summary"
    return lines[:-1], summary


def test_killed_scan_resumes_to_the_same_report(tmp_path):
    tree = tmp_path / "tree"
    paths = _make_tree(tree)
    listed = paths[::6]
    records = []
    for p in listed:
        pdq, md5 = hash_media(p, ["pdq", "md5"])
        records.append(SignalRecord("pdq", pdq.hex, labels=("demo",), external_id=p.name))
        records.append(SignalRecord("md5", md5.hex, labels=("demo",), external_id=p.name))
    with Engine.open(tmp_path / "data", eager=False) as engine:
        assert engine.ingest(records, list_name="partner").rejected == 0

    common = ["--data-dir", str(tmp_path / "data"), "--types", "pdq,md5", "--workers", "1",
              "--batch-size", "4", "--no-progress"]  # fmt: skip
    killed_catalog = tmp_path / "killed.sqlite"
    report = tmp_path / "resumed.jsonl"
    proc = _scan([str(tree), *common, "--catalog", str(killed_catalog), "--out", str(report)])
    deadline = time.monotonic() + 60
    done_at_kill = 0
    while time.monotonic() < deadline:
        done_at_kill = committed_files(killed_catalog)
        if done_at_kill >= 12 or proc.poll() is not None:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the scan finished before it could be killed"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the scan hashes in worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # its workers die with it (no orphan left idling on a dead pool's pipe)
    _, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:  # pragma: no cover - only on failure: do not leak them
        p.kill()
    assert not alive, f"orphaned scan workers: {[p.pid for p in alive]}"
    assert 0 < done_at_kill < N_FILES + 1
    assert not report.exists()  # never a partial report

    resumed = _scan([str(tree), *common, "--catalog", str(killed_catalog), "--out", str(report)])
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()

    reference = tmp_path / "reference.jsonl"
    fresh = _scan([str(tree), *common, "--catalog", str(tmp_path / "fresh.sqlite"),
                   "--out", str(reference)])  # fmt: skip
    _, err = fresh.communicate(timeout=120)
    assert fresh.returncode == 0, err.decode()

    got, got_summary = _records(report)
    want, want_summary = _records(reference)
    assert got == want  # same records, same order, no duplicates
    assert len(set(got)) == len(got)
    assert sum('"kind": "match"' in line for line in want) >= 2 * len(listed)
    assert any('"kind": "failure"' in line for line in want)
    for key in ("seen", "failed", "failed_by_reason", "matches", "matched_files"):
        assert got_summary[key] == want_summary[key], key
    # the resumed run did not hash again what the killed run had committed
    assert got_summary["skipped_unchanged"] >= done_at_kill - 1  # (the broken file is retried)
    assert got_summary["hashed"] + got_summary["skipped_unchanged"] >= N_FILES
    assert got_summary["hashed"] < want_summary["hashed"]
