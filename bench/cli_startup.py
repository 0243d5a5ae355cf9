"""CLI start-up benchmark: what a verb costs before it does any work.

    python -m bench cli_startup                        # 7 rounds
    git worktree add /tmp/hm-old 7fd51b3 && python -m bench cli_startup --baseline /tmp/hm-old

Why: operators run store verbs from scripts and cron (a `remote health` probe every
few seconds), and the test suite runs hundreds of CLI subprocesses; each paid for
importing every verb's libraries (numba, OpenCV, PyAV, FAISS, gRPC) whatever it ran.
Cases: the bare import of the CLI, `--help`, `lists ls` on a small store, `remote
health` against a closed local port (connection refused at once: the cost is the
start, not the network), `hash` of one generated JPEG. After an untimed warm-up
round, rounds interleave the cases (and the baseline's, run just before each) so load
from other jobs hits all alike; medians of wall and CPU (the child's user + sys) are
printed, and with ``--baseline`` each case's new/old ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.export import _baseline_command, run

IMPORT_ONLY = "from hashmatch.server.cli import main"
#: refused at once: what is timed is the start, not the network (exits 1 by design)
CLOSED_PORT_HEALTH = ("remote", "--server", "127.0.0.1:9", "--timeout", "0.5", "health")


def _cases(work: Path) -> list[tuple[str, tuple[str, ...]]]:
    data = str(work / "data")
    return [
        ("import the CLI", ()),  # replaced by a -c of IMPORT_ONLY below
        ("--help", ("--help",)),
        ("lists ls", ("lists", "ls", "--data-dir", data)),
        ("remote health (port closed)", CLOSED_PORT_HEALTH),
        ("hash x.jpg", ("hash", str(work / "x.jpg"))),
    ]


def _import_command(command: list[str]) -> list[str]:
    """The interpreter (and path set-up) of ``command`` running only the CLI's import."""
    if command[-1].endswith("main()"):  # a baseline: -c "...; from ...entry import main; main()"
        setup = command[-1].split("; from ")[0]
        return [*command[:-1], f"{setup}; {IMPORT_ONLY}"]
    return [sys.executable, "-c", IMPORT_ONLY]


def _prepare(work: Path, hm: list[str]) -> None:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(work / "x.jpg"), cv2.GaussianBlur(image, (9, 9), 3))
    run([*hm, "lists", "create", "bench", "--data-dir", str(work / "data")])


def _command(base: list[str], args: tuple[str, ...]) -> list[str]:
    return _import_command(base) if not args else [*base, *args]


def _tolerant_run(command: list[str]) -> tuple[float, float]:
    """``run`` for a verb that exits non-zero by design (health of a closed port)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench cli_startup")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each case (median)")
    parser.add_argument("--baseline", default=None, help="a checkout whose CLI to time too")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hm-bench-cli-"))
    try:
        _bench(work, args.rounds, args.baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, rounds: int, baseline: str | None) -> None:
    hm = [str(Path(sys.executable).with_name("hashmatch"))]
    _prepare(work, hm)
    versions = [("new", hm)]
    if baseline:
        versions.insert(0, ("old", _baseline_command(Path(baseline), work)))
    cases = _cases(work)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _what, extra in cases:  # untimed: a first `hash` fills numba's kernel cache (~15 s)
        for _tag, command in versions:
            _tolerant_run(_command(command, extra))
    print(f"load {os.getloadavg()[0]:.1f}; {rounds} rounds after a warm-up")
    for _ in range(rounds):
        for what, extra in cases:
            for tag, command in versions:
                times.setdefault((what, tag), []).append(_tolerant_run(_command(command, extra)))
    for what, _extra in cases:
        medians = {}
        for tag, _ in versions:
            runs = times[(what, tag)]
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            medians[tag] = (wall, cpu)
            print(f"  {tag} {what:<30} {wall:6.3f}s wall {cpu:6.3f}s cpu")
        if "old" in medians:
            (ow, oc), (nw, nc) = medians["old"], medians["new"]
            print(f"    new/old: wall x{nw / ow:.2f}, cpu x{nc / oc:.2f}")
    print(f"  load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
