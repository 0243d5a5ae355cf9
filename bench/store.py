"""Store benchmark: CSV ingest rate and start-up time (from store vs from snapshot).

    python -m bench store                      # 1M ingest, start-up at 1M (the README numbers)
    python -m bench store --sizes 1000000,10000000
    python -m bench store --sizes 100000 --quick

Targets (issue 3): >= 100k PDQ signals/s ingested from CSV; start-up from a
snapshot <= 5 s at 10M signals. Anchors printed next to each number.
For each size: write a CSV of N random PDQ hashes (python-threatexchange / HMA
column names), ingest it into a fresh store through the same path as
``hashmatch ingest`` (streaming parser -> batched transactions -> live index),
then time ``Engine.open`` with no snapshot (builds from the store) and with one.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

INGEST_TARGET = 100_000  # signals/s
SNAPSHOT_START_TARGET_10M = 5.0  # seconds


def write_csv(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("signal_type,signal_value,labels,external_id\n")
        chunk = 200_000
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            codes = rng.integers(0, 256, (m, 32), dtype=np.uint8)
            hexes = codes.tobytes().hex()
            f.write(
                "".join(f"pdq,{hexes[64 * i : 64 * i + 64]},bench,x{start + i}\n" for i in range(m))
            )


def sqlite_baseline(workdir: Path, n: int = 200_000) -> int:
    """Rows/s of a bare executemany INSERT into a table with one unique integer key,
    same pragmas: the machine's ceiling for any row-per-signal store (calibration)."""
    import sqlite3

    path = workdir / "baseline.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, fp INTEGER, code BLOB)")
    conn.execute("CREATE UNIQUE INDEX t_fp ON t(fp)")
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    fps = rng.integers(0, 2**62, n).tolist()
    rows = [(fps[i], codes[i].tobytes()) for i in range(n)]
    t = time.perf_counter()
    for i in range(0, n, 10_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (fp, code) VALUES (?, ?)", rows[i : i + 10_000])
        conn.execute("COMMIT")
    rate = round(n / (time.perf_counter() - t))
    conn.close()
    for p in workdir.glob("baseline.sqlite*"):
        p.unlink()
    return rate


def run_size(n: int, workdir: Path, *, ingest: bool = True) -> dict:
    from hashmatch.engine.ingest import read_records
    from hashmatch.engine.runtime import Engine

    data = workdir / f"store-{n}"
    shutil.rmtree(data, ignore_errors=True)
    csv_path = workdir / f"pdq-{n}.csv"
    t = time.perf_counter()
    write_csv(csv_path, n)
    out: dict = {"n": n, "csv_mb": round(csv_path.stat().st_size / 2**20, 1)}
    out["csv_write_s"] = round(time.perf_counter() - t, 2)

    # What `hashmatch ingest FILE` does: stream the file into the store (a running
    # server applies the change log on its next lookup).
    engine = Engine.open(data, eager=False)
    t = time.perf_counter()
    report = engine.ingest(
        read_records(csv_path), list_name="bench", actor="bench", source=str(csv_path)
    )
    secs = time.perf_counter() - t
    assert report.added == n, report.as_dict()
    out["ingest_s"] = round(secs, 2)
    out["ingest_per_s"] = round(n / secs)
    engine.close()
    out["sqlite_baseline_per_s"] = sqlite_baseline(workdir)
    csv_path.unlink()
    out["db_mb"] = round(sum(p.stat().st_size for p in data.glob("store.sqlite*")) / 2**20, 1)

    t = time.perf_counter()
    engine = Engine.open(data)  # no snapshot yet: build from the store
    out["start_from_store_s"] = round(time.perf_counter() - t, 2)
    assert engine.stats()["types"]["pdq"]["indexed"] == n
    t = time.perf_counter()
    engine.snapshot()
    out["snapshot_write_s"] = round(time.perf_counter() - t, 2)
    engine.close()

    t = time.perf_counter()
    engine = Engine.open(data)
    out["start_from_snapshot_s"] = round(time.perf_counter() - t, 2)
    assert engine._load_info["source"] == "snapshot", engine._load_info
    probe = np.random.default_rng(0).integers(0, 256, (1, 32), dtype=np.uint8)
    t = time.perf_counter()
    engine.match("pdq", probe)
    out["first_match_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["index_kind"] = engine.stats()["types"]["pdq"]["kind"]
    engine.close()
    shutil.rmtree(data, ignore_errors=True)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench store")
    parser.add_argument("--sizes", default="1000000", help="comma-separated signal counts")
    parser.add_argument("--workdir", default=None, help="where to put the stores (temp dir)")
    parser.add_argument("--quick", action="store_true", help="100k only (CI smoke)")
    args = parser.parse_args(argv)
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    base = Path(args.workdir or tempfile.mkdtemp(prefix="hm-bench-store-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        for n in sizes:
            r = run_size(n, base)
            print(
                f"n={n:>10,}  ingest {r['ingest_per_s']:>9,}/s "
                f"(target {INGEST_TARGET:,}/s: x{r['ingest_per_s'] / INGEST_TARGET:.2f}; "
                f"bare SQLite insert here {r['sqlite_baseline_per_s']:,}/s)  "
                f"start from store {r['start_from_store_s']:.2f}s  "
                f"from snapshot {r['start_from_snapshot_s']:.2f}s"
                + (f" (target {SNAPSHOT_START_TARGET_10M:.0f}s at 10M)" if n >= 10_000_000 else "")
            )
            print(f"   details: {r}")
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
