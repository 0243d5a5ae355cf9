"""Benchmark the exact Hamming indexes: ``python -m bench indexes [--sizes ...] [--quick]``.

For each size N and each data set (uniform random 256-bit codes; clustered codes
that look like real PDQ: near-duplicate families around centres with skewed
bits), in ONE run:

- hashmatch ``auto`` (MIH) with 1 shard: single queries and a batch on one thread,
  then the batch with every core (query spans); and with one shard per core;
- FAISS ``IndexBinaryFlat`` (range_search at T+1), one thread and all threads;
- FAISS ``IndexBinaryMultiHash`` 16x16, nflip=1 (exact at T=31; pytx's layout);
- python-threatexchange ``PDQIndex`` (its public API: hex strings in, ``query``),
  capped at ``--pytx-max`` codes because building it from Python strings at 10M
  takes minutes and gigabytes (the cap is printed in the table).

Measured: build seconds, index bytes per raw code byte, single-query latency
p50/p99 at T (default 31), batch throughput (queries/s), and an exactness
check (every method must return the same hits as FAISS flat). Then a radius
sweep and a small-N sweep showing where MIH loses to a flat scan, and the JIT
warm-up (cold compile in a fresh numba cache vs a cached load).
Prints Markdown tables; paste them into the README's indexes section.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CORES = os.cpu_count() or 1


# ---------------------------------------------------------------- data


def random_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def flip_bits(codes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip about ``counts[i]`` random bits of row i (vectorised, in place)."""
    rows = np.arange(len(codes))
    for r in range(int(counts.max(initial=0))):
        sel = rows[counts > r]
        codes[sel, rng.integers(0, 32, len(sel))] ^= np.uint8(1) << rng.integers(
            0, 8, len(sel)
        ).astype(np.uint8)
    return codes


def clustered_codes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Families of near-duplicates (0..24 bits from a centre), bits skewed 20..80%."""
    families = max(1, n // 8)
    bias = rng.random(256) * 0.6 + 0.2
    centres = np.packbits(rng.random((families, 256)) < bias, axis=1)
    codes = centres[rng.integers(0, families, n)]
    return flip_bits(codes, rng.integers(0, 25, n), rng), centres


def make_queries(codes, nq, rng, centres=None) -> np.ndarray:
    """Half perturbed stored codes (hits exist), half new codes from the same source."""
    half = nq // 2
    near = flip_bits(
        codes[rng.integers(0, len(codes), half)].copy(), rng.integers(4, 20, half), rng
    )
    if centres is None:
        fresh = random_codes(nq - half, rng)
    else:
        fresh = flip_bits(
            centres[rng.integers(0, len(centres), nq - half)].copy(),
            rng.integers(0, 25, nq - half),
            rng,
        )
    return np.concatenate([near, fresh])


# ---------------------------------------------------------------- timing


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def latencies(fn, queries, budget_s: float = 20.0) -> np.ndarray:
    fn(queries[:1])  # warm
    out = []
    start = time.perf_counter()
    for i in range(len(queries)):
        t = time.perf_counter()
        fn(queries[i : i + 1])
        out.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(out) >= 20:
            break
    return np.array(out) * 1e3


def throughput(fn, queries, budget_s: float = 20.0) -> float:
    """Queries/s for one batch call (shrunk for slow methods to fit the budget)."""
    probe = queries[: max(1, min(len(queries), 8))]
    t = time.perf_counter()
    fn(probe)
    per = (time.perf_counter() - t) / len(probe)
    nq = int(min(len(queries), max(len(probe), budget_s / max(per, 1e-9))))
    t = time.perf_counter()
    fn(queries[:nq])
    return nq / (time.perf_counter() - t)


def hit_sets(lims, ids) -> list[frozenset]:
    return [frozenset(ids[lims[i] : lims[i + 1]].tolist()) for i in range(len(lims) - 1)]


# ---------------------------------------------------------------- methods


def bench_ours(codes, queries, radius, shards, label):
    """Rows for one hashmatch index: latency and batch on one thread, then (when
    there are more cores) batch throughput with every core."""
    from hashmatch.indexes import make_index

    gc.collect()
    before = rss()
    index = make_index(256, "auto", shards, threads=1)
    t = time.perf_counter()
    index.add(codes, np.arange(len(codes), dtype=np.int64))
    build = time.perf_counter() - t
    grown = rss() - before

    def search(q):
        return index.search_radius(q, radius)

    segs = index.stats()["shards"][0]["segments"]
    base = dict(
        method=f"{label} ({segs[0]['type'] if segs else 'empty'})",
        build=build,
        mem=index.memory_bytes() / codes.nbytes,
        rss=grown / codes.nbytes,
        n=len(codes),
    )
    rows = []
    if shards == 1:
        lat = latencies(search, queries)
        rows.append(
            dict(base, threads="1", p50=np.percentile(lat, 50), p99=np.percentile(lat, 99),
                 qps=throughput(search, queries))
        )  # fmt: skip
    if CORES > 1:
        index.threads = CORES
        lat = latencies(search, queries) if shards > 1 else np.array([np.nan])
        rows.append(
            dict(base, threads=str(CORES), p50=np.percentile(lat, 50),
                 p99=np.percentile(lat, 99), qps=throughput(search, queries))
        )  # fmt: skip
    lims, _, ids = index.search_radius(queries, radius)
    return rows, hit_sets(lims, ids)


def bench_faiss_flat(codes, queries, radius, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index = faiss.IndexBinaryFlat(256)
    index.add(codes)
    build = time.perf_counter() - t

    def search(q):
        return index.range_search(q, radius + 1)

    lat = latencies(search, queries) if threads == 1 else np.array([np.nan])
    qps = throughput(search, queries)
    lims, _, ids = index.range_search(queries, radius + 1)
    row = dict(
        method="FAISS IndexBinaryFlat",
        threads=str(threads),
        build=build,
        mem=1.0,
        rss=np.nan,
        p50=np.percentile(lat, 50),
        p99=np.percentile(lat, 99),
        qps=qps,
        n=len(codes),
    )
    faiss.omp_set_num_threads(CORES)
    return row, hit_sets(lims, ids)


def bench_faiss_mih(codes, queries, radius):
    import faiss

    faiss.omp_set_num_threads(1)
    gc.collect()
    before = rss()
    t = time.perf_counter()
    index = faiss.IndexBinaryMultiHash(256, 16, 16)
    index.nflip = 1
    index.add(codes)
    build = time.perf_counter() - t
    grown = rss() - before

    def search(q):
        return index.range_search(q, radius + 1)

    lat = latencies(search, queries)
    qps = throughput(search, queries)
    lims, _, ids = index.range_search(queries, radius + 1)
    faiss.omp_set_num_threads(CORES)
    row = dict(
        method="FAISS MultiHash 16x16 nflip=1",
        threads="1",
        build=build,
        mem=grown / codes.nbytes if grown > codes.nbytes // 10 else np.nan,  # RSS delta
        rss=grown / codes.nbytes,
        p50=np.percentile(lat, 50),
        p99=np.percentile(lat, 99),
        qps=qps,
        n=len(codes),
    )
    return row, hit_sets(lims, ids)


def bench_pytx(codes, queries, cap):
    import faiss
    from threatexchange.signal_type.pdq.pdq_index import PDQIndex

    faiss.omp_set_num_threads(1)
    sub = codes[:cap]
    hexes = [c.tobytes().hex() for c in sub]
    gc.collect()
    before = rss()
    t = time.perf_counter()
    index = PDQIndex([(h, i) for i, h in enumerate(hexes)])
    build = time.perf_counter() - t
    grown = rss() - before
    qhex = [q.tobytes().hex() for q in queries]

    def search(q):
        for row in q:
            index.query(row.tobytes().hex())

    lat = latencies(search, queries)
    qps = throughput(search, queries)
    hits = [frozenset(m.metadata for m in index.query(h)) for h in qhex]
    faiss.omp_set_num_threads(CORES)
    row = dict(
        method="pytx PDQIndex" + (f" (N capped at {cap:,})" if cap < len(codes) else ""),
        threads="1",
        build=build,
        mem=grown / sub.nbytes,
        rss=grown / sub.nbytes,
        p50=np.percentile(lat, 50),
        p99=np.percentile(lat, 99),
        qps=qps,
        n=len(sub),
    )
    return row, hits


# ---------------------------------------------------------------- sweeps


def radius_sweep(codes, queries, radii) -> list[str]:
    """p50 single-query latency of the MIH-kind index (which scans where its cost model
    says so, "auto path") vs FAISS flat as the radius grows (one core)."""
    import faiss

    from hashmatch.indexes import make_index

    faiss.omp_set_num_threads(1)
    mih = make_index(256, "mih", 1)
    mih.add(codes, np.arange(len(codes)))
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    lines = [
        "| T | auto p50 ms | tables x probes (max) | auto path | FAISS flat p50 ms | flat/MIH |",
        "|---|---|---|---|---|---|",
    ]
    seg = mih._state[0].segments[0]
    for r in radii:
        plan = seg._probe_plan(r)
        path = "scan" if plan is None else "MIH"
        q = queries[:40]
        ours = np.percentile(latencies(lambda x, r=r: mih.search_radius(x, r), q, 8), 50)
        theirs = np.percentile(latencies(lambda x, r=r: flat.range_search(x, r + 1), q, 8), 50)
        probes = "-" if plan is None else f"{len(seg.widths)} x ≤{int(plan[3].max())}"
        lines.append(
            f"| {r} | {ours:.3f} | {probes} | {path} | {theirs:.2f} | {theirs / ours:.1f}x |"
        )
    faiss.omp_set_num_threads(CORES)
    return lines


def small_n_sweep(rng, radius) -> list[str]:
    import faiss

    from hashmatch.indexes import make_index

    faiss.omp_set_num_threads(1)
    lines = [
        f"| N | auto picks | auto p50 ms | flat-kind p50 ms | MIH-forced p50 ms (T={radius}) |",
        "|---|---|---|---|---|",
    ]
    for n in (1_000, 10_000, 30_000, 100_000, 300_000):
        codes, centres = clustered_codes(n, rng)
        q = make_queries(codes, 40, rng, centres)
        cells = []
        picked = ""
        for kind in ("auto", "flat", "mih"):
            index = make_index(256, kind, 1)
            index.add(codes, np.arange(n))
            if kind == "auto":
                picked = index.stats()["shards"][0]["segments"][0]["type"]
            cells.append(
                np.percentile(latencies(lambda x, ix=index: ix.search_radius(x, radius), q, 5), 50)
            )
        lines.append(f"| {n:,} | {picked} | {cells[0]:.3f} | {cells[1]:.3f} | {cells[2]:.3f} |")
    faiss.omp_set_num_threads(CORES)
    return lines


JIT_PROBE = (
    "import time, numpy as np; t=time.perf_counter();"
    "from hashmatch.indexes import make_index; i=time.perf_counter();"
    "ix=make_index(256,'mih',1);"
    "c=np.random.default_rng(0).integers(0,256,(5000,32),dtype=np.uint8);"
    "ix.add(c,np.arange(5000)); ix.search_radius(c[:2],31); ix.search_knn(c[:2],3);"
    "ix.remove(np.arange(3));"
    "print(round(i-t,2), round(time.perf_counter()-i,2))"
)


def jit_warmup() -> str:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cold:
        env["NUMBA_CACHE_DIR"] = cold
        out = []
        for _ in range(2):  # first run compiles into the empty cache, second loads it
            res = subprocess.run(
                [sys.executable, "-c", JIT_PROBE],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            out.append(res.stdout.split())
    return (
        f"JIT warm-up (fresh process): import {out[0][0]} s; first add+search+remove "
        f"{out[0][1]} s with an empty numba cache (compiles, once per machine/checkout), "
        f"{out[1][1]} s with the cache written by that run."
    )


# ---------------------------------------------------------------- main


def fmt_rows(rows, flat_p50, pytx_p50, pytx_n=None) -> list[str]:
    lines = [
        "| N | data | method | threads | build s | bytes/raw | p50 ms | p99 ms | batch q/s | "
        "p50 vs FAISS flat | p50 vs pytx |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = r["p50"]
        vs_flat = f"{flat_p50 / p50:.1f}x" if np.isfinite(p50) and flat_p50 else "-"
        vs_pytx = f"{pytx_p50 / p50:.1f}x" if np.isfinite(p50) and pytx_p50 else "-"
        if vs_pytx != "-" and pytx_n != r["n"]:
            vs_pytx += f" (pytx at {pytx_n:,})"  # capped: pytx at full N is slower still
        lines.append(
            f"| {r['n']:,} | {r['data']} | {r['method']} | {r['threads']} | {r['build']:.1f} | "
            f"{r['mem']:.2f} | {p50:.3f} | {r['p99']:.3f} | {r['qps']:,.0f} | "
            f"{vs_flat} | {vs_pytx} |"
        )
    return lines


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench indexes", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--data", default="random,clustered")
    ap.add_argument("--radius", type=int, default=31)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--pytx-max", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k codes, fewer queries, no sweeps")
    ap.add_argument("--no-peers", action="store_true", help="skip FAISS MultiHash and pytx")
    ap.add_argument("--no-sweeps", action="store_true", help="skip the radius and small-N sweeps")
    ap.add_argument(
        "--no-multihash", action="store_true", help="skip FAISS MultiHash (minutes to build at 10M)"
    )
    args = ap.parse_args(argv)
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    nq = 60 if args.quick else args.queries
    rng = np.random.default_rng(2026)
    print(f"cores={CORES}  radius={args.radius}  queries={nq}  load={os.getloadavg()[0]:.1f}")
    print(jit_warmup())
    for n in sizes:
        for data in args.data.split(","):
            t = time.perf_counter()
            if data == "random":
                codes, centres = random_codes(n, rng), None
            else:
                codes, centres = clustered_codes(n, rng)
            queries = make_queries(codes, nq, rng, centres)
            print(f"\n## N={n:,} {data} (generated in {time.perf_counter() - t:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
            rows, hits = [], {}
            row, hits["flat"] = bench_faiss_flat(codes, queries, args.radius, 1)
            rows.append(row)
            row, _ = bench_faiss_flat(codes, queries, args.radius, CORES)
            rows.append(row)
            more, hits["ours1"] = bench_ours(
                codes, queries, args.radius, 1, "hashmatch auto, 1 shard"
            )
            rows += more
            if CORES > 1:
                more, hits["oursS"] = bench_ours(
                    codes, queries, args.radius, CORES, f"hashmatch auto, {CORES} shards"
                )
                rows += more
            if not args.no_peers:
                if not args.no_multihash:
                    row, hits["mh"] = bench_faiss_mih(codes, queries, args.radius)
                    rows.append(row)
                if args.radius == 31:
                    cap = min(n, args.pytx_max)
                    row, pytx_hits = bench_pytx(codes, queries, cap)
                    rows.append(row)
                    if cap == n:
                        hits["pytx"] = pytx_hits
            for r in rows:
                r["data"] = data
            flat_p50 = rows[0]["p50"]
            pytx = [r for r in rows if r["method"].startswith("pytx")]
            pytx_p50, pytx_n = (pytx[0]["p50"], pytx[0]["n"]) if pytx else (None, None)
            print("\n".join(fmt_rows(rows, flat_p50, pytx_p50, pytx_n)))
            total = sum(len(h) for h in hits["flat"])
            same = {k: v == hits["flat"] for k, v in hits.items()}
            print(f"\nexactness vs FAISS flat ({total} hits over {nq} queries): {same}", flush=True)
            if not (args.quick or args.no_sweeps) and data == "clustered" and n == sizes[0]:
                print("\nradius sweep (one core, clustered):")
                print("\n".join(radius_sweep(codes, queries, (0, 8, 16, 31, 40, 47, 55, 63))))
            del codes
            gc.collect()
    if not (args.quick or args.no_sweeps):
        print("\nsmall-N sweep (clustered, one core):")
        print("\n".join(small_n_sweep(rng, args.radius)))


if __name__ == "__main__":
    main(sys.argv[1:])
