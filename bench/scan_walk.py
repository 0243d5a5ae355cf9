"""Parent memory of a scan over many small files: ``python -m bench scan_walk``.

Why: ``hashmatch scan`` must handle millions of stored files, and the scanning
process's memory must not grow with the tree. N tiny files (a 67-byte PNG each; all in
ONE directory by default, the worst case for a sorted walk; ``--per-dir`` spreads them)
are scanned with ``--types md5 --no-match`` into a fresh catalog; the scan runs in a
child process that reports its own peak RSS (``VmHWM``: the parent only, not its
hashing workers) and wall time. A second run over the same catalog measures the
all-unchanged re-scan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# a valid 1x1 grey PNG; the md5-only scan reads it but does not decode it
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082"
)

CHILD = """
import sys, time
from hashmatch.server.cli import cli
t = time.monotonic()
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("BENCH", int(hwm) * 1024, time.monotonic() - t, file=sys.stderr)
"""


def make_tree(directory: Path, n: int, per_dir: int = 0) -> None:
    """n tiny files in one directory, or in directories of ``per_dir`` (reused)."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.listdir(directory):
        return
    for i in range(n):
        folder = directory / f"d{i // per_dir:05d}" if per_dir else directory
        if per_dir and i % per_dir == 0:
            folder.mkdir()
        (folder / f"f{i:07d}.png").write_bytes(TINY_PNG)


def run_scan(tree: Path, catalog: Path, workers: int) -> tuple[int, float, dict]:
    """(parent peak RSS bytes, wall seconds, summary) of one scan."""
    args = [sys.executable, "-c", CHILD, "scan", str(tree), "--types", "md5", "--no-match",
            "--catalog", str(catalog), "--workers", str(workers), "--out",
            str(catalog.with_suffix(".jsonl")), "--no-progress"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("BENCH ")][-1]
    _, rss, secs = line.split()
    summary = json.loads(catalog.with_suffix(".jsonl").read_text().splitlines()[-1])
    return int(rss), float(secs), summary


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench scan_walk")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-dir", type=int, default=0, help="files per directory (0: one)")
    ap.add_argument("--dir", type=Path, help="work directory (the tree is reused if present)")
    args = ap.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="hashmatch-scan-walk-"))
    tree = work / "tree"
    started = time.monotonic()
    make_tree(tree, args.files, args.per_dir)
    where = f"directories of {args.per_dir}" if args.per_dir else "one directory"
    print(f"tree: {args.files} files in {where} ({time.monotonic() - started:.1f} s)")
    catalog = work / f"catalog-{os.getpid()}.sqlite"
    for label in ("first scan", "re-scan (all unchanged)"):
        rss, secs, summary = run_scan(tree, catalog, args.workers)
        print(
            f"{label}: parent peak RSS {rss / 2**20:.0f} MB, {secs:.1f} s, "
            f"seen {summary['seen']}, hashed {summary['hashed']}, "
            f"skipped {summary['skipped_unchanged']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
