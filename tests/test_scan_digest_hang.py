"""A digest read that hangs cannot hold the scan: the file is reported failed, saying
why, within the digest bound, and the scan goes on.

A file whose worker was killed (stalled: a decode that does not return, a read from a
hung mount) has its md5/sha256 read again in a process of its own, waited for at most
60 s whatever its size; now 5 s plus its size at 4 MB/s (a healthy mount's slowest
read), at most 60 s. That bound was untested. Here the reader
is frozen (SIGSTOP) while it holds the file: as a read stuck on a hung mount, it never
answers. Real workers, a real fork server, real files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

from scan_tree import ORIGINALS, _png, slow_png

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.scan import ScanOptions, scan

PADDING = 64 * 1024 * 1024  # after IEND: ~0.3 s to read and digest, the reader's window


def _holders(path: Path) -> set[int]:
    """Processes this test started (its descendants) that hold ``path`` open."""
    found = set()
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                        found.add(pid)
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def _freezing_the_second_reader(path: Path):
    """SIGSTOP every process that opens ``path`` after the first one (the worker that
    stalls on it) is gone: its digest reader. Yields the pids frozen."""
    frozen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        first: set[int] = set()
        while not done.is_set():
            holders = _holders(path)
            if not frozen and not first:
                first = holders
            for pid in holders - first - set(frozen):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
            # quick until the reader is caught (its window is ~0.3 s), then slow: the
            # bound is ~21 s, and a 2 ms walk of /proc throughout cost ~17 s of CPU
            time.sleep(0.2 if frozen else 0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield frozen
    finally:
        done.set()
        thread.join(5)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_digest_read_that_hangs_fails_the_file_within_the_bound_and_the_scan_goes_on(
    tmp_path,
):
    tree = tmp_path / "tree"
    tree.mkdir()
    stuck = tree / "b-stuck.png"
    slow_png(stuck)
    with open(stuck, "ab") as fh:
        fh.write(bytes(PADDING))
    for name in ("astronaut", "coffee"):  # walked before and after it
        (tree / f"{name[0]}-{name}.png").write_bytes(_png(ORIGINALS[name]()))
    opts = ScanOptions(types=("pdq", "md5", "sha256"), workers=1, progress=False,
                       file_timeout=0.2, stall_grace=0.3)  # fmt: skip
    bound = 5 + stuck.stat().st_size / (4 * 1024 * 1024)  # by its size: 21.1 s
    report = tmp_path / "r.jsonl"
    with _freezing_the_second_reader(stuck) as frozen:
        started = time.monotonic()
        with Catalog(tmp_path / "c.sqlite") as cat:
            summary = scan([tree], catalog=cat, matcher=None, report=report, options=opts)
        took = time.monotonic() - started
    assert frozen, "no digest reader was seen holding the file"
    assert summary.failed_by_reason == {"timeout": 1}
    assert summary.hashed == 2  # the files after it too: the scan went on
    (failure,) = [
        r
        for r in map(json.loads, report.read_text().splitlines())
        if r["kind"] == "failure" and r["file"] == str(stuck)
    ]
    assert failure["reason"] == "timeout"
    assert failure["error"].endswith(
        f"its digests could not be read: no digest after {bound:.1f} s (a hung mount?): its "
        "reader was killed"
    ), failure["error"]
    # the stall (0.2 + 0.3 s), the bound, the other files; it was 60 s for any file
    assert took < bound + 25, took
    print(f"scan took {took:.1f} s")
    for pid in frozen:  # killed by the scan, not left stopped
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return ""
