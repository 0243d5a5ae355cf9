"""``hashmatch scan --out - | head -n 3``: the reader leaves before the report's end.

The report is written once every file is committed, so the scan itself is done then.
It used to exit 1 with nothing on stderr (no summary) and the run left unfinished in
the catalog; it now gives the summary and the re-run hint on stderr, records the run
as finished, and a re-run writes the whole report. A real pipe into a real ``head``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

CLI = "from hashmatch.server.entry import main; main()"
#: with 200-character names, a report of ~130 kB: more than a pipe holds (64 kB), so
#: the scan is still writing when head leaves
N_FILES = 400


def test_a_report_piped_into_head_still_gives_the_summary(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(N_FILES):  # failures: report lines without any hashing to wait for
        (tree / f"{i:03}{'x' * 200}.jpg").write_bytes(b"")
    data = tmp_path / "data"
    args = [sys.executable, "-c", CLI, "scan", str(tree), "--data-dir", str(data),
            "--no-match", "--workers", "1", "--no-progress"]  # fmt: skip
    scan = subprocess.Popen([*args, "--out", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-n", "3"], stdin=scan.stdout, capture_output=True, timeout=120)
    scan.stdout.close()  # head's end of the pipe is its alone: its exit closes the pipe
    _, err = scan.communicate(timeout=120)
    stderr = err.decode()
    assert len(head.stdout.decode().splitlines()) == 3
    assert scan.returncode == 1, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    summary = json.loads(stderr.splitlines()[0])
    assert summary["seen"] == N_FILES and summary["failed"] == N_FILES
    assert "run the same command again for the whole report" in stderr
    with sqlite3.connect(data / "catalog.sqlite") as conn:
        (finished,) = conn.execute("SELECT finished_at FROM runs").fetchone()
    assert finished is not None  # the run is complete, not left unfinished

    again = subprocess.run([*args, "--out", str(tmp_path / "r.jsonl")], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "failure" for r in records) == N_FILES
    assert records[-1]["hashed"] == 0
