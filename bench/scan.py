"""Benchmark batch scans and retroactive matching: ``python -m bench scan [--quick]``.

1. **Scan throughput.** N generated 1920x1080 JPEGs (benign: scikit-image samples,
   shifted and re-tinted per file). Files/s of ``hashmatch scan`` (pdq + md5, catalog
   writes and lookups included) with 1 and 2 worker processes, against the floor of
   decoding alone (a ``cv2.imread`` loop in 1 and 2 processes). Anchor (issue 5):
   scan >= 0.8x decode-only throughput. The three are measured in interleaved rounds
   (``--rounds``, each on every n-th file) so other jobs' load hits them alike.
2. **Retroactive matching.** A catalog of M stored-file PDQ hashes (synthetic codes
   written straight into the catalog, as a scan would) and K new signals (with planted
   near-duplicates of catalogued hashes, so there is something to find). Time for
   ``rescan`` vs re-hashing the M files at the measured scan rate; first rescan (the
   catalog index is built from the catalog) and the next (loaded from its cache).

Full size (the README numbers): N=1000, M=1,000,000, K=10,000. ``--quick``: N=60,
M=50,000, K=1,000.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hashmatch.engine.scan import keep_heap, worker_context

DECODE_ANCHOR = 0.8


# ----------------------------------------------------------------------------- inputs


def make_jpegs(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct 1920x1080 JPEGs (q=90); reused if already there."""
    import cv2
    from skimage import data

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"img{i:05d}.jpg" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    bases = [
        cv2.resize(np.ascontiguousarray(im[..., ::-1]), (1920, 1080), interpolation=cv2.INTER_CUBIC)
        for im in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())
    ]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        if path.exists():
            continue
        img = np.roll(bases[i % len(bases)], int(rng.integers(0, 1920)), axis=1)
        tint = rng.integers(-20, 21, size=3)
        img = np.clip(img.astype(np.int16) + tint, 0, 255).astype(np.uint8)
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def _imread_all(paths: list[str]) -> int:
    import cv2

    cv2.setNumThreads(1)
    n = 0
    for p in paths:
        n += cv2.imread(p) is not None
    return n


def decode_floor(paths: list[Path], procs: int, tuned_heap: bool = False) -> float:
    """Files/s of decoding alone with cv2.imread in ``procs`` processes.

    ``tuned_heap``: in worker processes with the scan workers' malloc settings
    (``scan.keep_heap``), to show how much of the scan's margin over the plain floor
    is that setting rather than less work after the decode.
    """
    names = [str(p) for p in paths]
    if procs == 1 and not tuned_heap:
        _imread_all(names[:3])  # warm the page cache and the library
        t = time.perf_counter()
        assert _imread_all(names) == len(names)
        return len(names) / (time.perf_counter() - t)
    init = keep_heap if tuned_heap else None
    with cf.ProcessPoolExecutor(procs, mp_context=worker_context(), initializer=init) as pool:
        list(pool.map(_imread_all, [names[i : i + 1] for i in range(procs)]))
        t = time.perf_counter()
        assert sum(pool.map(_imread_all, _tasks(names))) == len(names)
        return len(names) / (time.perf_counter() - t)


def _tasks(names: list[str], size: int = 4) -> list[list[str]]:
    """Small tasks handed out as processes free up, as the scan does (``chunk=4``): one
    fixed half per process would wait for whichever process other jobs slowed down."""
    return [names[i : i + size] for i in range(0, len(names), size)]


def _hash_all(paths: list[str]) -> int:
    from hashmatch.engine.hashing import hash_media

    for p in paths:
        with open(p, "rb") as fh:
            hash_media(fh.read(), ["pdq", "md5"])
    return len(paths)


def hash_floor(paths: list[Path], procs: int) -> float:
    """Files/s of reading + hash_media (pdq + md5) alone in ``procs`` processes: no
    catalog, no lookups, no walk (the scan's own overhead is what is left). With the
    scan workers' malloc settings, as the scan's workers have them."""
    names = [str(p) for p in paths]
    context = worker_context()
    with cf.ProcessPoolExecutor(procs, mp_context=context, initializer=keep_heap) as pool:
        list(pool.map(_hash_all, [names[i : i + 1] for i in range(procs)]))  # imports, JIT
        t = time.perf_counter()
        assert sum(pool.map(_hash_all, _tasks(names))) == len(names)
        return len(names) / (time.perf_counter() - t)


def seed_store(data_dir: Path, k: int, rng: np.random.Generator) -> None:
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    codes = rng.integers(0, 256, size=(k, 32), dtype=np.uint8)
    with Engine.open(data_dir, eager=False) as engine:
        engine.ingest(
            (SignalRecord("pdq", c.tobytes().hex()) for c in codes), list_name="bench-existing"
        )


def scan_rate(paths: list[Path], workers: int, work: Path, tag: str = "") -> tuple[float, dict]:
    """Files/s of ``scan`` over exactly ``paths`` (files given directly), fresh catalog."""
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan

    catalog_path = work / f"catalog-{workers}{tag}.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(catalog_path) + suffix).unlink(missing_ok=True)
    matcher = LocalMatcher.open(work / "data")
    with Catalog(catalog_path) as catalog:
        t = time.perf_counter()
        summary = scan(paths, catalog=catalog, matcher=matcher,
                       report=work / f"report-{workers}{tag}.jsonl",
                       options=ScanOptions(types=("pdq", "md5"), workers=workers,
                                           progress=False))  # fmt: skip
        elapsed = time.perf_counter() - t
    matcher.close()
    assert summary.hashed == len(paths), summary
    return len(paths) / elapsed, summary.as_dict()


def measure(paths: list[Path], workers: int, work: Path, rounds: int) -> dict:
    """Decode-only, hash-only and scan files/s, interleaved in ``rounds`` rounds.

    Each round takes every ``rounds``-th file and runs the three measurements back to
    back, so load from other jobs that comes and goes hits all three alike (one long
    run per measurement let a burst of load land on just one of them). Rates are total
    files / total seconds; the per-round scan/decode ratios show the spread.
    """
    secs = {"decode": 0.0, "decode_heap": 0.0, "hash": 0.0, "scan": 0.0}
    ratios = []
    for r in range(rounds):
        part = paths[r::rounds]
        n = len(part)
        rates = {
            "decode": decode_floor(part, workers),
            "decode_heap": decode_floor(part, workers, tuned_heap=True),
            "hash": hash_floor(part, workers),
            "scan": scan_rate(part, workers, work, tag=f"-r{r}")[0],
        }
        for key, rate in rates.items():
            secs[key] += n / rate
        ratios.append(rates["scan"] / rates["decode"])
    total = len(paths)
    return {key: total / s for key, s in secs.items()} | {"ratios": ratios}


# ----------------------------------------------------------------------------- retroactive


def build_catalog(path: Path, m: int, rng: np.random.Generator) -> np.ndarray:
    """A catalog of m files with one PDQ each (random codes, quality 100)."""
    from hashmatch.engine.catalog import Catalog

    codes = rng.integers(0, 256, size=(m, 32), dtype=np.uint8)
    now = time.time()
    with Catalog(path) as cat:
        cat.conn.execute("PRAGMA synchronous=OFF")  # bench setup only; scans use FULL
        step = 50_000
        for start in range(0, m, step):
            stop = min(start + step, m)
            with cat.transaction() as conn:
                conn.executemany(
                    "INSERT INTO files(id, path, size, mtime_ns, types, status, scanned_at) "
                    "VALUES (?, ?, 1000, 1, 'pdq', 'hashed', ?)",
                    ((i + 1, f"/store/{i:08d}.jpg", now) for i in range(start, stop)),
                )
                conn.executemany(
                    "INSERT INTO hashes(id, file_id, signal_type, frame, code, quality) "
                    "VALUES (?, ?, 'pdq', 0, ?, 100)",
                    ((i + 1, i + 1, codes[i].tobytes()) for i in range(start, stop)),
                )
    return codes


def flip_bits(codes: np.ndarray, nbits: int, rng: np.random.Generator) -> np.ndarray:
    out = codes.copy()
    for row in out:
        for b in rng.choice(256, size=nbits, replace=False):
            row[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return out


def _warm_up_index() -> None:
    """Compile / load the index kernels once (numba JIT) so timings are steady state."""
    from hashmatch.indexes import make_index

    warm = np.random.default_rng(0).integers(0, 256, (2000, 32), np.uint8)
    index = make_index(256, kind="mih")
    index.add(warm, np.arange(len(warm), dtype=np.int64))
    index.search_radius(warm[:10], 31)


def retroactive(work: Path, m: int, k: int, planted: int, rng) -> dict:
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.rescan import rescan
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    catalog_path = work / f"retro-{m}.sqlite"
    data_dir = work / f"retro-data-{m}"
    for p in (catalog_path, Path(f"{catalog_path}-wal"), Path(f"{catalog_path}-shm")):
        p.unlink(missing_ok=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(f"{catalog_path}.rescan-index", ignore_errors=True)
    t = time.perf_counter()
    codes = build_catalog(catalog_path, m, rng)
    build_s = time.perf_counter() - t
    _warm_up_index()
    with Engine.open(data_dir, eager=False) as engine, Catalog(catalog_path) as cat:
        rescan(cat, engine.store)  # cursor = now (empty store)
        picks = rng.choice(m, size=planted, replace=False)
        near = flip_bits(codes[picks], 8, rng)
        new = np.concatenate([near, rng.integers(0, 256, size=(k - planted, 32), dtype=np.uint8)])
        engine.ingest(
            (SignalRecord("pdq", c.tobytes().hex()) for c in new), list_name="partner-new"
        )
        t = time.perf_counter()
        result = rescan(cat, engine.store)  # cold: the catalog index is built (and cached)
        rescan_s = time.perf_counter() - t
        found = {m.file_id - 1 for m in result.new}
        assert set(picks.tolist()) <= found, "rescan missed planted near-duplicates"
        # a second batch of K new signals: the steady state, catalog index from the cache
        picks2 = rng.choice(m, size=planted, replace=False)
        new2 = np.concatenate(
            [flip_bits(codes[picks2], 8, rng), rng.integers(0, 256, (k - planted, 32), np.uint8)]
        )
        engine.ingest(
            (SignalRecord("pdq", c.tobytes().hex()) for c in new2), list_name="partner-newer"
        )
        t = time.perf_counter()
        warm = rescan(cat, engine.store)
        warm_s = time.perf_counter() - t
        assert set(picks2.tolist()) <= {x.file_id - 1 for x in warm.new}
    return {
        "catalog": m,
        "new_signals": k,
        "catalog_build_s": build_s,
        "rescan_s": rescan_s,
        "load_s": result.summary.load_s,
        "query_s": result.summary.query_s,
        "warm_s": warm_s,
        "warm_load_s": warm.summary.load_s,
        "warm_query_s": warm.summary.query_s,
        "new_matches": len(result.new),
        "planted": planted,
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench scan")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--files", type=int)
    ap.add_argument("--catalog", type=int)
    ap.add_argument("--new", type=int)
    ap.add_argument("--dir", type=Path, help="work directory (JPEGs are reused if present)")
    ap.add_argument("--skip-retro", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    ap.add_argument(
        "--skip-scan",
        type=float,
        metavar="FILES_PER_S",
        help="skip the scan part; estimate re-hashing at this rate",
    )
    args = ap.parse_args(argv)
    n = args.files or (60 if args.quick else 1000)
    m = args.catalog or (50_000 if args.quick else 1_000_000)
    k = args.new or (1_000 if args.quick else 10_000)
    work = args.dir or Path(tempfile.gettempdir()) / "hashmatch-bench-scan"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    cores = os.cpu_count() or 1

    t = time.perf_counter()
    paths = make_jpegs(work / f"jpegs-{n}", n)
    print(
        f"inputs: {n} JPEGs 1920x1080 ({time.perf_counter() - t:.1f} s to prepare), {cores} cores"
    )
    if not (work / "data" / "store.sqlite").exists():
        seed_store(work / "data", 10_000, rng)

    rows = []
    load_before = os.getloadavg()
    for workers in () if args.skip_scan else (1, 2):
        rates = measure(paths, workers, work, args.rounds)
        rows.append(
            (workers, rates["scan"], rates["hash"], rates["decode"], rates["ratios"],
             rates["decode_heap"])
        )  # fmt: skip
    load_after = os.getloadavg()
    print()
    print("| workers | scan files/s | hash-only files/s | decode-only files/s | scan / hash-only "
          "| scan / decode-only (anchor >= 0.8x) | per-round scan / decode "
          "| decode-only, workers' heap settings | scan / that |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for workers, rate, hashed, floor, ratios, floor_heap in rows:
        ok = "ok" if rate / floor >= DECODE_ANCHOR else "below"
        spread = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"| {workers} | {rate:.1f} | {hashed:.1f} | {floor:.1f} | {rate / hashed:.2f}x | "
              f"{rate / floor:.2f}x ({ok}) | {spread} | {floor_heap:.1f} | "
              f"{rate / floor_heap:.2f}x |")  # fmt: skip
    print(
        "(floors run in as many processes as the scan has workers: decode-only = cv2.imread "
        "loop; hash-only = read + hash_media pdq+md5; scan = walk + hash + catalog + lookups; "
        f"{args.rounds} interleaved rounds; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after)"
    )

    if args.skip_retro:
        return
    retro = retroactive(work, m, k, planted=min(100, k), rng=rng)
    best = max(r[1] for r in rows) if rows else args.skip_scan
    rehash_s = m / best
    print()
    print("| catalog | new signals | rescan | s (load+index / query) | re-hash estimate s | "
          "speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for label, total, load, query in (
        ("first (index built)", retro["rescan_s"], retro["load_s"], retro["query_s"]),
        ("next (index cached)", retro["warm_s"], retro["warm_load_s"], retro["warm_query_s"]),
    ):
        print(
            f"| {m:,} | {k:,} | {label} | {total:.2f} ({load:.2f} / {query:.2f}) | "
            f"{rehash_s:,.0f} (at {best:.1f} files/s) | {rehash_s / total:,.0f}x |"
        )
    print(f"(planted {retro['planted']} near-duplicates, found {retro['new_matches']} new matches; "
          f"catalog built in {retro['catalog_build_s']:.1f} s)")  # fmt: skip
