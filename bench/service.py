"""Benchmark the gRPC service end to end: ``python -m bench service [--sizes ...] [--quick]``.

For each size: load N random PDQ signals (plus planted near-duplicates so lookups
find something) into a fresh data dir, start ``hashmatch serve`` as a subprocess
on 127.0.0.1 (its own process, as in production), and measure from this process:

- unary Match (one hash per call) latency p50/p99 at 1, 16 and 64 concurrent callers;
- batched Match throughput (hashes/s, 1,000 hashes per call, 2 callers);
- Match-with-media throughput for 512x512 JPEGs (items/s, 4 callers);
- the same lookups as a direct in-process ``engine.match`` (the service's overhead).

Anchors (issue 4, 2-core machine, 10M): p99 <= 5 ms at 64 callers; >= 20k hashes/s.
Load is generated only against 127.0.0.1 and every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

P99_TARGET_MS = 5.0
SERVE = "from hashmatch.server.cli import main; main()"
BATCH_TARGET = 20_000.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32), dtype=np.uint8)


def _flip_bits(codes: np.ndarray, bits: int, seed: int) -> np.ndarray:
    """Copies of ``codes`` with ``bits`` random bits flipped (near-duplicates)."""
    rng = np.random.default_rng(seed)
    out = codes.copy()
    for row in out:
        for b in rng.choice(256, size=bits, replace=False):
            row[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return out


def populate(data_dir: Path, n: int, queries: np.ndarray) -> float:
    """Fill a store with ``n`` PDQ signals, ``queries`` planted as near-duplicates.

    Codes are ingested in sorted order (the store's unique key then grows by
    appending, which keeps 10M inserts from turning into random B-tree writes) and
    without a live index (built once at the end, as a snapshot the server starts from).
    """
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    started = time.perf_counter()
    codes = _codes(n, seed=1000)
    codes[: len(queries)] = _flip_bits(queries, 8, seed=7)
    order = np.lexsort(codes.T[::-1])  # lexicographic by byte = by hex string
    codes = codes[order]
    engine = Engine.open(data_dir, eager=False)
    try:
        chunk = 500_000
        for done in range(0, n, chunk):
            rows = codes[done : done + chunk]
            records = (
                SignalRecord(signal_type="pdq", hash_hex=row.tobytes().hex(), labels=("bench",))
                for row in rows
            )
            engine.ingest(
                records, list_name="bench", actor="bench", source="bench", batch_size=50_000
            )
            print(
                f"  loaded {done + len(rows):,}/{n:,} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        engine.snapshot(actor="bench")  # builds the index; the server starts from it
    finally:
        engine.close()
    return time.perf_counter() - started


def reindex(data_dir: Path) -> float:
    """Drop the snapshots, build the indexes from the store with today's index code, snapshot."""
    from hashmatch.engine.runtime import Engine

    started = time.perf_counter()
    shutil.rmtree(data_dir / "snapshots", ignore_errors=True)
    engine = Engine.open(data_dir, create=False)
    try:
        engine.snapshot(actor="bench")
    finally:
        engine.close()
    return time.perf_counter() - started


def start_server(data_dir: Path, port: int, workers: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-c", SERVE, "serve",
        "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
        "--insecure-no-auth", "--metrics-port", "-1", "--workers", str(workers),
    ]  # fmt: skip
    log = open(data_dir / "server.log", "w")  # noqa: SIM115
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_serving(target: str, timeout: float) -> float:
    from hashmatch.server.client import HashmatchClient

    started = time.perf_counter()
    with HashmatchClient(target) as client:
        client.wait_until_serving(timeout)
    return time.perf_counter() - started


async def _unary_load(target: str, queries: np.ndarray, callers: int, seconds: float, cap: int):
    import grpc

    from hashmatch.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc

    requests = [
        matcher_pb2.MatchRequest(hashes=[common_pb2.HashValue(signal_type="pdq", raw=q.tobytes())])
        for q in queries
    ]
    latencies: list[float] = []
    failures = 0
    planted_calls = 0
    matched = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = matcher_pb2_grpc.MatcherStub(channel)
        await stub.Match(requests[0], timeout=120)  # warm the channel
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal failures, matched, planted_calls
            i = k
            while time.perf_counter() < stop_at and len(latencies) < cap:
                t = time.perf_counter()
                try:
                    reply = await stub.Match(requests[i % len(requests)], timeout=10)
                    if i % len(requests) < len(requests) // 2:  # a planted near-duplicate
                        planted_calls += 1
                        matched += bool(reply.results[0].matches)
                except grpc.aio.AioRpcError:
                    failures += 1
                latencies.append(time.perf_counter() - t)
                i += callers

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "callers": callers,
        "calls": len(latencies),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "qps": len(latencies) / elapsed,
        "failures": failures,
        "hit_rate": matched / max(planted_calls, 1),
    }


async def _health_load(target: str, callers: int, seconds: float) -> dict:
    """The same closed loop on grpc.health Check: what a call costs with no work at all."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        await stub.Check(request, timeout=30)
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                await stub.Check(request, timeout=30)
                latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"callers": callers, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "qps": len(latencies) / elapsed}  # fmt: skip


async def _batch_load(target, queries, batch, callers, seconds):
    import grpc

    from hashmatch.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc

    batches = [
        matcher_pb2.MatchRequest(
            hashes=[
                common_pb2.HashValue(signal_type="pdq", raw=q.tobytes())
                for q in queries[s : s + batch]
            ]
        )
        for s in range(0, len(queries) - batch + 1, batch)
    ]
    hashes = 0
    failures = 0
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 256 << 20)]
    ) as channel:
        stub = matcher_pb2_grpc.MatcherStub(channel)
        await stub.Match(batches[0].__class__(hashes=batches[0].hashes[:1]), timeout=300)
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal hashes, failures
            i = k
            while time.perf_counter() < stop_at:
                try:
                    await stub.Match(batches[i % len(batches)], timeout=300)
                    hashes += batch
                except grpc.aio.AioRpcError:
                    failures += 1
                i += callers

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed = time.perf_counter() - started
    return {"hashes_per_s": hashes / elapsed, "failures": failures, "batch": batch}


def _jpegs(count: int) -> list[bytes]:
    from PIL import Image
    from skimage import data

    sources = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.immunohistochemistry(),
    ]
    out = []
    for i in range(count):
        img = Image.fromarray(sources[i % len(sources)]).resize((512, 512))
        img = img.rotate(i % 7, fillcolor=(0, 0, 0))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def _media_load(target, jpegs, callers, seconds):
    import grpc

    from hashmatch.v1 import matcher_pb2, matcher_pb2_grpc

    items = 0
    failures = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = matcher_pb2_grpc.MatcherStub(channel)
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal items, failures
            i = k
            while time.perf_counter() < stop_at:
                request = matcher_pb2.MatchRequest(media=[jpegs[i % len(jpegs)]])
                try:
                    await stub.Match(request, timeout=30)
                    items += 1
                except grpc.aio.AioRpcError:
                    failures += 1
                i += callers

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed = time.perf_counter() - started
    return {"items_per_s": items / elapsed, "failures": failures}


def direct_batch(data_dir: Path, queries: np.ndarray, batch: int, seconds: float) -> float:
    """The same batched lookups as an in-process library call (no gRPC)."""
    from hashmatch.engine.runtime import Engine

    engine = Engine.open(data_dir, create=False)
    try:
        engine.match("pdq", queries[:1])
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            s = (done // batch * batch) % max(len(queries) - batch, 1)
            engine.match("pdq", queries[s : s + batch])
            done += batch
        return done / (time.perf_counter() - started)
    finally:
        engine.close()


def run_size(n: int, args, workdir: Path) -> dict:
    data_dir = workdir / f"n{n}"
    marker = data_dir / "bench-populated"
    queries = _codes(4096, seed=99)
    print(f"## {n:,} PDQ signals", flush=True)
    if marker.exists():  # --keep from an earlier run: same seeds, same data
        load_s = float(marker.read_text())
        print(f"  reusing {data_dir} (loaded earlier in {load_s:.0f} s)", flush=True)
        if args.reindex:
            print(f"  reindexed with the current index code in {reindex(data_dir):.0f} s")
    else:
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        load_s = populate(data_dir, n, queries[:2048])  # the first half have a planted match
        marker.write_text(f"{load_s:.1f}")
    if args.populate_only:
        return {}
    port = _free_port()
    target = f"127.0.0.1:{port}"
    server = start_server(data_dir, port, workers=args.workers)
    try:
        ready_s = wait_serving(target, timeout=1800)
        unary = [
            asyncio.run(_unary_load(target, queries, c, args.seconds, args.max_calls))
            for c in (1, 16, 64)
        ]
        health = asyncio.run(_health_load(target, 64, min(args.seconds, 4)))
        batch = asyncio.run(_batch_load(target, queries, args.batch, 2, args.seconds))
        media = asyncio.run(_media_load(target, _jpegs(16), 4, args.seconds))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    direct = direct_batch(data_dir, queries, args.batch, min(args.seconds, 5))
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"n": n, "load_s": load_s, "ready_s": ready_s, "unary": unary, "batch": batch,
            "media": media, "direct": direct, "health": health}  # fmt: skip


def report(rows: list[dict]) -> None:
    print()
    print(
        "| signals | callers | p50 ms | p99 ms | calls/s | failed | planted found "
        "| p99 vs 5 ms target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for u in row["unary"]:
            print(
                f"| {row['n']:,} | {u['callers']} | {u['p50']:.2f} | {u['p99']:.2f} | "
                f"{u['qps']:,.0f} | {u['failures']} | {u['hit_rate']:.0%} | "
                f"{u['p99'] / P99_TARGET_MS:.2f}x |"
            )
        h = row["health"]
        print(
            f"| {row['n']:,} | 64 (health Check, no work) | {h['p50']:.2f} | {h['p99']:.2f} | "
            f"{h['qps']:,.0f} | 0 | - | {h['p99'] / P99_TARGET_MS:.2f}x |"
        )
    print()
    print(
        "| signals | hashes per call | batched hashes/s (gRPC) | vs 20k target | in-process "
        "engine.match hashes/s | gRPC/in-process | 512x512 JPEG Match items/s | load s "
        "| start s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        b = row["batch"]["hashes_per_s"]
        print(
            f"| {row['n']:,} | {row['batch']['batch']} | {b:,.0f} | {b / BATCH_TARGET:.2f}x | "
            f"{row['direct']:,.0f} | "
            f"{b / max(row['direct'], 1e-9):.2f} | {row['media']['items_per_s']:.1f} | "
            f"{row['load_s']:.0f} | {row['ready_s']:.1f} |"
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench service")
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated counts")
    parser.add_argument("--quick", action="store_true", help="20k signals, 2 s per phase")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured phase")
    parser.add_argument("--max-calls", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1000, help="hashes per batched Match")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the data dirs (reused by a later --workdir run)"
    )
    parser.add_argument("--populate-only", action="store_true", help="load the stores and stop")
    parser.add_argument(
        "--reindex", action="store_true", help="rebuild kept stores' indexes with the current code"
    )
    args = parser.parse_args(argv)
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hashmatch-bench-service-"))
    if args.populate_only:
        args.keep = True
    rows = [run_size(n, args, workdir) for n in sizes]
    if not args.populate_only:
        report(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
