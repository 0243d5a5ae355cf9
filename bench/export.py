"""Export benchmark: `hashmatch lists export` in every format against CSV ingest.

    python -m bench export                     # 400k signals (the README numbers)
    python -m bench export --size 100000 --workdir /tmp/hm-export
    git worktree add /tmp/hm-old 8a85c3c && python -m bench export --baseline /tmp/hm-old

Why through the CLI: what an operator times is the command (process start, store
open, the temp file and its rename, fsync), not one library call. Each run writes a
CSV of N random PDQ hashes with labels and external ids, ingests it with `hashmatch
ingest` (the rate an export is compared with, measured in the same run, on the same
loaded machine), retracts a few hundred with `retract --file`, then times each
export: the default (stdout), `--format jsonl|csv|hex` to a file, gzip (`--out
x.csv.gz`, `x.jsonl.gz`) and `--retracted`. Wall and CPU (the child's user+sys)
are both printed: a gap between them is time spent waiting (disk, fsync, or a core
taken by other jobs), not computing; rates are given against ingest's in both.
``--baseline TREE`` (a checkout of another commit) times that code's export too, each
case run old then new back to back, so both see the same load.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RETRACTED = 300

#: (what, extra CLI arguments, output file name or None for stdout)
CASES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("default (stdout, jsonl)", (), None),
    ("--format jsonl", ("--format", "jsonl"), "out.jsonl"),
    ("--format csv", ("--format", "csv"), "out.csv"),
    ("--format hex", ("--format", "hex"), "out.txt"),
    ("gzip csv", (), "out.csv.gz"),
    ("gzip jsonl", (), "out.jsonl.gz"),
    ("--retracted", ("--retracted",), "retracted.txt"),
)


def write_list(path: Path, n: int, seed: int = 0) -> list[str]:
    """A CSV of ``n`` random PDQ hashes, labelled (one to three labels, from a few
    names, as partner lists carry them) with an external id each; returns the hashes
    to retract (every ``n // RETRACTED``-th)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8).tobytes().hex()
    names = ("csam", "tier-1", "partner-a", "reviewed", "t2")
    with open(path, "w") as f:
        f.write("signal_type,signal_value,labels,external_id\n")
        for i in range(n):
            labels = ";".join(names[(i + k) % len(names)] for k in range(1 + i % 3))
            f.write(f"pdq,{codes[64 * i : 64 * i + 64]},{labels},x{i}\n")
    step = max(1, n // RETRACTED)
    return [codes[64 * i : 64 * i + 64] for i in range(0, n, step)][:RETRACTED]


def run(args: list[str], *, stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """Wall and CPU seconds of one CLI call (CPU: this child's user + sys)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(args, check=True, stdout=stdout, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _baseline_command(tree: Path, workdir: Path) -> list[str]:
    """The CLI of the checkout ``tree``: this interpreter with a ``hashmatch`` package
    that is ``tree`` (first on the path, ahead of the editable install)."""
    package = workdir / "baseline-pkg"
    package.mkdir(exist_ok=True)
    link = package / "hashmatch"
    if not link.exists():
        link.symlink_to(tree.resolve(), target_is_directory=True)
    os.environ["HASHMATCH_BENCH_BASELINE"] = str(package)
    return [
        sys.executable,
        "-c",
        "import sys; sys.path.insert(0, __import__('os').environ["
        "'HASHMATCH_BENCH_BASELINE']); from hashmatch.server.entry import main; main()",
    ]


def _line(what: str, wall: float, cpu: float, count: int, ingest: tuple[float, float]) -> str:
    """One timing: wall and CPU seconds, signals/s, and both as ratios to ingest's."""
    rate, cpu_rate = count / wall, count / cpu
    return (
        f"  {what:<36} {wall:6.2f}s wall {cpu:6.2f}s cpu {rate:>9,.0f}/s x{rate / ingest[0]:.2f}"
        f" of ingest (per cpu-s: {cpu_rate:>9,.0f}/s x{cpu_rate / ingest[1]:.2f})"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench export")
    parser.add_argument("--size", type=int, default=400_000, help="signals in the list")
    parser.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir's outputs")
    parser.add_argument("--baseline", default=None, help="a checkout whose export to time too")
    args = parser.parse_args(argv)
    n = args.size
    base = Path(args.workdir or tempfile.mkdtemp(prefix="hm-bench-export-"))
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    shutil.rmtree(data, ignore_errors=True)
    hm = [str(Path(sys.executable).with_name("hashmatch"))]
    dd = ("--data-dir", str(data))
    try:
        source = base / "list.csv"
        targets = write_list(source, n)
        (base / "retract.txt").write_text("".join(f"pdq:{h}\n" for h in targets))
        wall, cpu = run([*hm, "ingest", str(source), "--list", "bench", *dd])
        ingest = (n / wall, n / cpu)
        print(f"load {os.getloadavg()[0]:.1f}; n={n:,}")
        print(f"  {'ingest csv':<36} {wall:6.2f}s wall {cpu:6.2f}s cpu {ingest[0]:>9,.0f}/s"
              f" (per cpu-s: {ingest[1]:>9,.0f}/s)")  # fmt: skip
        run([*hm, "retract", "--list", "bench", "--file", str(base / "retract.txt"), *dd])
        versions = [("", hm)]
        if args.baseline:
            versions.insert(0, ("old ", _baseline_command(Path(args.baseline), base)))
        for what, extra, name in CASES:
            count = len(targets) if "--retracted" in extra else n - len(targets)
            for tag, command in versions:
                cmd = [*command, "lists", "export", "bench", *extra, *dd]
                if name is not None:
                    cmd += ["--out", str(base / f"{tag.strip()}{name}")]
                wall, cpu = run(cmd)
                print(_line(f"{tag}export {what}", wall, cpu, count, ingest))
            if args.baseline and name is not None:
                same = (base / f"old{name}").read_bytes() == (base / name).read_bytes()
                print(f"    same bytes as old: {same}")
        print(f"  load at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
