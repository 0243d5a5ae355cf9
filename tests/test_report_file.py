"""Reports are written through a temporary file of each writer's own, then renamed.

The temporary name was ``<report>.tmp`` for every writer: two scans (or a scan and a
rescan) writing the same report at once truncated and interleaved one file, and the
second rename failed with ``FileNotFoundError`` after the first installed a mixed
report. Real processes, real files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hashmatch.engine.scan import write_jsonl_atomically

_WRITER = """
    import sys, time
    from pathlib import Path
    from hashmatch.engine.scan import write_jsonl_atomically

    base, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    def records():
        yield {"writer": me, "n": 0}  # the temporary file is open by now
        (base / f"ready-{me}").touch()
        deadline = time.monotonic() + 30
        while not (base / f"ready-{other}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for n in range(1, 2001):
            yield {"writer": me, "n": n, "pad": "x" * 50}

    write_jsonl_atomically(base / "r.jsonl", records())
"""


def test_two_writers_of_one_report_each_install_a_whole_report(tmp_path):
    """Both writers have their temporary file open at once (each waits for the other
    before writing the rest): both succeed, and the report is one writer's, whole."""
    code = textwrap.dedent(_WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), me, other],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [rc for rc, _ in results] == [0, 0], results
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    writers = {r["writer"] for r in records}
    assert len(writers) == 1, "lines of both writers in one report"
    assert [r["n"] for r in records] == list(range(2001))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "ready-a", "ready-b"]


def test_a_failed_write_leaves_the_old_report_and_no_temporary_file(tmp_path):
    report = tmp_path / "r.jsonl"
    report.write_text('{"old": true}\n')

    def records():
        yield {"n": 0}
        raise RuntimeError("the catalog went away")

    with pytest.raises(RuntimeError):
        write_jsonl_atomically(report, records())
    assert report.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_the_report_has_the_mode_a_plain_open_gives(tmp_path):
    """Not mkstemp's 0600: a report others are meant to read stays readable."""
    old = os.umask(0o022)
    try:
        write_jsonl_atomically(tmp_path / "r.jsonl", [{"n": 1}])
    finally:
        os.umask(old)
    assert (tmp_path / "r.jsonl").stat().st_mode & 0o777 == 0o644


def test_temporary_files_of_killed_writers_are_removed_by_the_next(tmp_path):
    """A dead writer's old temporary file goes; a live writer's, or a fresh one, stays."""
    dead = _dead_pid()
    old = time.time() - 3600
    names = {
        "abandoned": f".r.jsonl.{dead}.0a0a0a0a.tmp",
        "fresh": f".r.jsonl.{dead}.0b0b0b0b.tmp",
        "live": f".r.jsonl.{os.getppid()}.0c0c0c0c.tmp",
        "other report": f".q.jsonl.{dead}.0d0d0d0d.tmp",
    }
    for key, name in names.items():
        (tmp_path / name).write_text("partial")
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    write_jsonl_atomically(tmp_path / "r.jsonl", [{"n": 1}])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"r.jsonl"} | {names[k] for k in ("fresh", "live", "other report")}


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(done.stdout)
    assert not Path(f"/proc/{pid}").exists()
    return pid
