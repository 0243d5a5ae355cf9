"""The two Python clients against one server: ``python -m bench clients [--size N]``.

Unary Match (one PDQ hash per call) requests/s from this one process: the asyncio
client with N concurrent coroutines on one channel vs the sync client with N threads
sharing one client (N = 1, 16, 64), against the same ``hashmatch serve`` subprocess on
127.0.0.1 with a store of ``--size`` signals (100k by default). Phases alternate (sync,
async per N) so a neighbour's load on a shared machine falls on both. Reuses the
service benchmark's store loader and server start (bench/service.py).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.service import _codes, _free_port, populate, start_server, wait_serving


def _sync_load(target: str, hashes: list[str], callers: int, seconds: float) -> dict:
    from hashmatch.server.client import HashmatchClient

    latencies: list[list[float]] = [[] for _ in range(callers)]
    with HashmatchClient(target) as client:
        client.match([("pdq", hashes[0])])
        stop_at = time.perf_counter() + seconds

        def caller(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                client.match([("pdq", hashes[i % len(hashes)])])
                latencies[k].append(time.perf_counter() - t)
                i += callers

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
        started, cpu = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return _summary([x for per in latencies for x in per], elapsed, cpu)


async def _async_load(target: str, hashes: list[str], callers: int, seconds: float) -> dict:
    from hashmatch.server.aio_client import AsyncHashmatchClient

    latencies: list[float] = []
    async with AsyncHashmatchClient(target) as client:
        await client.match([("pdq", hashes[0])])
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                await client.match([("pdq", hashes[i % len(hashes)])])
                latencies.append(time.perf_counter() - t)
                i += callers

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return _summary(latencies, elapsed, cpu)


def _summary(latencies: list[float], elapsed: float, cpu: float) -> dict:
    """Calls/s, latency percentiles, and this process's CPU per call (the client's own
    cost, what it takes from the pipeline it runs in, whatever the server's speed)."""
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)),
            "cpu_us": cpu / max(len(latencies), 1) * 1e6}  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench clients")
    parser.add_argument("--size", type=int, default=100_000, help="signals in the store")
    parser.add_argument("--callers", default="1,16,64", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured phase")
    parser.add_argument("--workers", type=int, default=32, help="the server's --workers")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="hashmatch-bench-clients-"))
    queries = _codes(2000, seed=5)
    hashes = [q.tobytes().hex() for q in queries]
    try:
        print(f"  loading {args.size:,} signals ...", flush=True)
        populate(workdir, args.size, queries[:1000])  # half the queries find a match
        port = _free_port()
        target = f"127.0.0.1:{port}"
        server = start_server(workdir, port, args.workers)
        try:
            wait_serving(target, 300)
            rows = []
            for callers in (int(c) for c in args.callers.split(",")):
                sync = _sync_load(target, hashes, callers, args.seconds)
                aio = asyncio.run(_async_load(target, hashes, callers, args.seconds))
                rows.append((callers, sync, aio))
                print(f"  N={callers}: sync {sync['rps']:,.0f}/s, async {aio['rps']:,.0f}/s",
                      flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nunary Match, {args.size:,} signals, {args.seconds:g} s a phase\n")
    print("| N | sync, N threads: req/s | p50 / p99 ms | client CPU µs/call "
          "| asyncio, N coroutines: req/s | p50 / p99 ms | client CPU µs/call "
          "| asyncio / sync req/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for callers, sync, aio in rows:
        print(f"| {callers} | {sync['rps']:,.0f} | {sync['p50']:.2f} / {sync['p99']:.2f} | "
              f"{sync['cpu_us']:.0f} | {aio['rps']:,.0f} | {aio['p50']:.2f} / {aio['p99']:.2f} | "
              f"{aio['cpu_us']:.0f} | {aio['rps'] / sync['rps']:.2f} |")  # fmt: skip
