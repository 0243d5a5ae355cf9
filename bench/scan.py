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
3. **Fast decode** (``--fast-decode``: PDQ from JPEG luma; ``--fast-decode-shrink``: also shrunk in
   the DCT domain): their rows in the scan table, and the PDQ Hamming distance to the
   exact path over the N bench JPEGs and scikit-image's photos saved as JPEG (native
   size and enlarged 2x/4x so the DCT-domain shrink applies; q75 and q95).

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
# scan modes measured: key suffix -> HashOptions.fast_decode level
MODES = {"": 0, "_luma": 1, "_shrink": 2}
MODE_LABELS = {"": "exact (default)", "_luma": "--fast-decode", "_shrink": "--fast-decode-shrink"}


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
    """Files/s of decoding alone with cv2.imread in ``procs`` fresh worker processes.

    ``tuned_heap``: with the scan workers' malloc settings (``scan.keep_heap``).
    Without them the floor depends on the process's malloc history: in a fresh process
    glibc maps, faults in (~2000 page faults) and unmaps each 1080p image, but once the
    process has freed one larger block (e.g. the bench generating its JPEGs) glibc's
    dynamic mmap threshold keeps the next ones on the heap and imread runs ~2x faster.
    The 1-process floor used to run in the bench's own process (fast after generating
    the JPEGs, slow when they were reused) and the 2-process one in fresh workers
    (always slow): "2 processes no faster than 1" was that, not a lack of parallelism.
    Every floor now runs in fresh workers (README, batch scans: the experiment).
    """
    names = [str(p) for p in paths]
    init = keep_heap if tuned_heap else None
    with cf.ProcessPoolExecutor(procs, mp_context=worker_context(), initializer=init) as pool:
        list(pool.map(_imread_all, [names[i : i + 1] for i in range(procs)]))
        t = time.perf_counter()
        assert sum(pool.map(_imread_all, _tasks(names))) == len(names)
        return len(names) / (time.perf_counter() - t)


def _floor_child(names: list[str], heap: bool, start_at: float, out) -> None:
    """One process of :func:`floor_experiment`: decode ``names``, report timings."""
    import resource

    import cv2

    cv2.setNumThreads(1)
    if heap:
        keep_heap()
    while time.time() < start_at:
        time.sleep(0.001)
    r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.time()
    for name in names:
        assert cv2.imread(name) is not None
    t1, c1, r1 = time.time(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    out.put((t0, t1, (c1 - c0) / len(names), (r1.ru_stime - r0.ru_stime) / len(names),
             (r1.ru_minflt - r0.ru_minflt) / len(names)))  # fmt: skip


def floor_experiment(paths: list[Path]) -> None:
    """Do 1 and 2 *fresh* processes (spawned, started together) decode at different
    rates, with glibc's default malloc and with the workers' settings? Prints files/s,
    how long the processes ran side by side, CPU and page faults per file."""
    import multiprocessing

    names = [str(p) for p in paths]
    ctx = multiprocessing.get_context("spawn")
    print("| floor | processes | files/s | side by side | CPU ms/file (system) | faults/file |")
    print("|---|---|---|---|---|---|")
    for heap in (False, True):
        for procs in (1, 2):
            out = ctx.Queue()
            start_at = time.time() + 2.0  # after the interpreters have started
            kids = [ctx.Process(target=_floor_child, args=(names[i::procs], heap, start_at, out))
                    for i in range(procs)]  # fmt: skip
            for k in kids:
                k.start()
            res = [out.get() for _ in kids]
            for k in kids:
                k.join()
            span = max(r[1] for r in res) - min(r[0] for r in res)
            both = min(r[1] for r in res) - max(r[0] for r in res)
            cpu = ", ".join(f"{r[2] * 1e3:.1f} ({r[3] * 1e3:.1f})" for r in res)
            faults = ", ".join(f"{r[4]:.0f}" for r in res)
            label = "workers' malloc" if heap else "glibc defaults"
            print(
                f"| cv2.imread, {label} | {procs} | {len(names) / span:.1f} | "
                f"{both:.2f} of {span:.2f} s | {cpu} | {faults} |"
            )


def _tasks(names: list[str], size: int = 4) -> list[list[str]]:
    """Small tasks handed out as processes free up, as the scan does (``chunk=4``): one
    fixed half per process would wait for whichever process other jobs slowed down."""
    return [names[i : i + size] for i in range(0, len(names), size)]


def _hash_all(paths: list[str], fast: int = 0) -> int:
    from hashmatch.engine.hashing import HashOptions, hash_media

    options = HashOptions(fast_decode=fast)
    for p in paths:
        with open(p, "rb") as fh:
            hash_media(fh.read(), ["pdq", "md5"], options)
    return len(paths)


def hash_floor(paths: list[Path], procs: int, fast: int = 0) -> float:
    """Files/s of reading + hash_media (pdq + md5) alone in ``procs`` processes: no
    catalog, no lookups, no walk (the scan's own overhead is what is left). With the
    scan workers' malloc settings, as the scan's workers have them."""
    names = [str(p) for p in paths]
    context = worker_context()
    with cf.ProcessPoolExecutor(procs, mp_context=context, initializer=keep_heap) as pool:
        warm = [names[i : i + 1] for i in range(procs)]
        list(pool.map(_hash_all, warm, [fast] * procs))  # imports, JIT
        tasks = _tasks(names)
        t = time.perf_counter()
        assert sum(pool.map(_hash_all, tasks, [fast] * len(tasks))) == len(names)
        return len(names) / (time.perf_counter() - t)


def seed_store(data_dir: Path, k: int, rng: np.random.Generator) -> None:
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    codes = rng.integers(0, 256, size=(k, 32), dtype=np.uint8)
    with Engine.open(data_dir, eager=False) as engine:
        engine.ingest(
            (SignalRecord("pdq", c.tobytes().hex()) for c in codes), list_name="bench-existing"
        )


def scan_rate(
    paths: list[Path], workers: int, work: Path, tag: str = "", fast: int = 0
) -> tuple[float, dict]:
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
                                           fast_decode=fast, progress=False))  # fmt: skip
        elapsed = time.perf_counter() - t
    matcher.close()
    assert summary.hashed == len(paths), summary
    return len(paths) / elapsed, summary.as_dict()


def measure(paths: list[Path], workers: int, work: Path, rounds: int) -> dict:
    """Decode-only (two floors), hash-only and scan files/s, default and fast decode,
    interleaved in ``rounds`` rounds.

    Each round takes every ``rounds``-th file and runs the measurements back to back,
    so load from other jobs that comes and goes hits all of them alike (one long run
    per measurement let a burst of load land on just one of them). Rates are total
    files / total seconds; the per-round ratios (scan / the higher floor) show the
    spread.
    """
    secs = dict.fromkeys(("decode", "decode_heap", *(f"{k}{m}" for m in MODES for k in
                                                     ("hash", "scan"))), 0.0)  # fmt: skip
    ratios: dict[str, list[float]] = {f"scan{m}": [] for m in MODES}
    for r in range(rounds):
        part = paths[r::rounds]
        n = len(part)
        rates = {
            "decode": decode_floor(part, workers),
            "decode_heap": decode_floor(part, workers, tuned_heap=True),
        }
        for mode, level in MODES.items():
            rates["hash" + mode] = hash_floor(part, workers, fast=level)
            rates["scan" + mode] = scan_rate(part, workers, work, f"-r{r}{mode}", level)[0]
        for key, rate in rates.items():
            secs[key] += n / rate
        floor = max(rates["decode"], rates["decode_heap"])
        for key in ratios:
            ratios[key].append(rates[key] / floor)
    total = len(paths)
    return {key: total / s for key, s in secs.items()} | {"ratios": ratios}


# ----------------------------------------------------------------------------- fast decode


def _skimage_jpegs() -> list[tuple[str, bytes]]:
    """scikit-image's photos as JPEG: native size and enlarged 2x / 4x (so the
    DCT-domain shrink applies), at quality 75 and 95."""
    import cv2
    from skimage import data

    names = ("astronaut", "camera", "coffee", "chelsea", "rocket", "moon", "brick", "grass",
             "gravel", "clock", "coins", "page", "text", "colorwheel", "immunohistochemistry",
             "hubble_deep_field", "retina")  # fmt: skip
    out = []
    for name in names:
        rgb = getattr(data, name)()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR) if rgb.ndim == 2 else rgb[..., 2::-1]
        for scale in (1, 2, 4):
            h, w = bgr.shape[:2]
            img = cv2.resize(bgr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
            for q in (75, 95):
                buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1]
                out.append((f"{name} x{scale} q{q}", buf.tobytes()))
    return out


def fast_distances(paths: list[Path]) -> dict:
    """PDQ Hamming distance to the exact path of ``fast_decode`` 1 (luma) and 2 (luma,
    shrunk), per set of JPEGs, with the exact path's quality."""
    from hashmatch.engine.hashing import HashOptions, hash_media

    luma, shrink = HashOptions(fast_decode=1), HashOptions(fast_decode=2)
    sets = {
        f"bench JPEGs ({len(paths)}, 1920x1080 q90)": [(p.name, p.read_bytes()) for p in paths],
        "scikit-image photos (17 x 3 sizes x 2 qualities)": _skimage_jpegs(),
    }
    out = {}
    for label, items in sets.items():
        dist: dict[str, list[int]] = {"luma": [], "shrink": []}
        quality, worst = [], []
        for name, data in items:
            exact = hash_media(data, ["pdq"])[0]
            for key, options in (("luma", luma), ("shrink", shrink)):
                code = hash_media(data, ["pdq"], options)[0].codes[0]
                dist[key].append(int(np.unpackbits(code ^ exact.codes[0]).sum()))
            quality.append(exact.quality)
            worst.append((dist["shrink"][-1], dist["luma"][-1], name))
        out[label] = {k: np.array(v) for k, v in dist.items()} | {
            "quality": np.array(quality),
            "worst": sorted(worst, reverse=True)[:5],
        }
    return out


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
        "--floor-experiment",
        action="store_true",
        help="only the decode floor in 1 and 2 fresh processes, both malloc settings",
    )
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
    if args.floor_experiment:
        floor_experiment(paths[:400])
        return
    if not (work / "data" / "store.sqlite").exists():
        seed_store(work / "data", 10_000, rng)

    rows = []
    load_before = os.getloadavg()
    for workers in () if args.skip_scan else (1, 2):
        rates = measure(paths, workers, work, args.rounds)
        floors = (rates["decode"], rates["decode_heap"])
        for key, label in MODE_LABELS.items():
            rows.append((workers, label, rates["scan" + key], rates["hash" + key], *floors,
                         rates["ratios"]["scan" + key]))  # fmt: skip
    load_after = os.getloadavg()
    print()
    print("| workers | decode | scan files/s | hash-only files/s | scan / hash-only "
          "| decode-only, plain malloc | decode-only, workers' malloc | scan / plain floor "
          "| scan / workers'-malloc floor | anchor >= 0.8x of the higher floor "
          "| per round |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for workers, mode, rate, hashed, floor, floor_heap, ratios in rows:  # fmt: skip
        best = max(floor, floor_heap)
        ok = "met" if rate / best >= DECODE_ANCHOR else "not met"
        spread = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"| {workers} | {mode} | {rate:.1f} | {hashed:.1f} | {rate / hashed:.2f}x | "
              f"{floor:.1f} | {floor_heap:.1f} | {rate / floor:.2f}x | {rate / floor_heap:.2f}x | "
              f"{rate / best:.2f}x ({ok}) | {spread} |")  # fmt: skip
    print(
        "(floors run in fresh worker processes, as many as the scan has workers: decode-only "
        "= cv2.imread loop; hash-only = read + hash_media pdq+md5; scan = walk + hash + "
        f"catalog + lookups; {args.rounds} interleaved rounds; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after)"
    )
    if not args.skip_scan:
        print()
        print("| JPEGs | fast-decode | PDQ bits from exact: max | p99 | mean | share 0 "
              "| over 31 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        worst = {}
        for label, res in fast_distances(paths).items():
            for key in ("luma", "shrink"):
                d = res[key]
                print(f"| {label} | {key} | {d.max()} | {np.percentile(d, 99):.0f} | "
                      f"{d.mean():.2f} | {(d == 0).mean():.0%} | {(d > 31).sum()} |")  # fmt: skip
            worst[label] = res["worst"]
        print("(PDQ Hamming distance in bits, 256-bit codes; the match threshold is 31)")
        for label, items in worst.items():
            print(f"largest shrink distances, {label}: " + ", ".join(
                f"{name} {s} (luma {lu})" for s, lu, name in items))  # fmt: skip

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
