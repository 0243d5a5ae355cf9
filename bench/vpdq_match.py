"""vPDQ matching: CPU per query against generated stored videos (README "vPDQ").

Stores ``--stored`` generated videos (50-300 frames: a few scenes, repeated frames,
small changes, qualities 30-100), then matches, against it:

* ``rows``: one-frame queries, as a Match's vPDQ hash rows (half planted from stored
  frames with a bit changed, half random; qualities 0-100, so about half are under
  vPDQ's floor);
* ``videos``: 50-300-frame videos (half a stored video with bits changed, half random).

Each is run both ways: ``per-call`` (one ``engine.match`` per query: what the server did
for every row before the batched path) and ``batched`` (one ``engine.match_videos``).
CPU time of this process (the host is shared), median of ``--runs``. Results of both
ways are compared (a digest of every match) so a speed-up never hides a change.

    python -m bench vpdq_match --stored 1000,10000 --rows 1000 --videos 40
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _video(rng: np.random.Generator, k: int) -> tuple[np.ndarray, list[int]]:
    scenes = rng.integers(0, 256, (max(1, k // 10), 32), dtype=np.uint8)
    codes = scenes[np.sort(rng.integers(0, len(scenes), k))].copy()
    flips = rng.random((k, 32)) < 0.03
    codes ^= (flips * rng.integers(0, 256, (k, 32))).astype(np.uint8)
    return codes, rng.integers(30, 101, k).tolist()


def _build(data_dir: Path, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    stored, records = [], []
    for i in range(n):
        codes, qualities = _video(rng, int(rng.integers(50, 301)))
        stored.append(codes)
        records.append(
            SignalRecord("vpdq", "", external_id=f"v{i}", frames=codes, frame_qualities=qualities)
        )
    with Engine.open(data_dir) as engine:
        engine.ingest(records, list_name="videos")
    return stored


def _queries(kind: str, stored: list[np.ndarray], n: int) -> list:
    rng = np.random.default_rng(1)
    if kind == "rows":
        frames = np.concatenate(stored)
        planted = frames[rng.integers(0, len(frames), n // 2)].copy()
        planted[:, 0] ^= 1
        rows = np.concatenate([planted, rng.integers(0, 256, (n - n // 2, 32), dtype=np.uint8)])
        qualities = rng.integers(0, 101, n).tolist()
        return [(rows[i : i + 1], [qualities[i]]) for i in range(n)]
    out = []
    for i in range(n):
        if i % 2:
            out.append(_video(rng, int(rng.integers(50, 301))))
        else:
            codes = stored[int(rng.integers(0, len(stored)))].copy()
            codes[:, 1] ^= 3
            out.append((codes, rng.integers(30, 101, len(codes)).tolist()))
    return out


def _measure(run: Callable[[], list], runs: int) -> tuple[float, str, int]:
    times, found = [], []
    for _ in range(runs):
        start = _cpu()
        found = run()
        times.append(_cpu() - start)
    key = [[(m.signal_id, m.distance, m.query_match_pct, m.target_match_pct) for m in f]
           for f in found]  # fmt: skip
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
    return statistics.median(times), digest, sum(len(f) for f in found)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench vpdq_match")
    parser.add_argument("--stored", default="1000", help="stored videos, comma-separated sizes")
    parser.add_argument("--rows", type=int, default=1000, help="one-frame queries")
    parser.add_argument("--videos", type=int, default=40, help="50-300-frame queries")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    print("| stored videos | queries | way | CPU per query (ms) | matches | digest |")
    print("|---|---|---|---|---|---|")
    for size in [int(s) for s in args.stored.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            stored = _build(Path(tmp) / "d", size)
            with Engine.open(Path(tmp) / "d") as engine:
                engine.match("vpdq", stored[0][:1])  # load the index
                for kind, n in (("rows", args.rows), ("videos", args.videos)):
                    queries = _queries(kind, stored, n)
                    ways = {"per-call": lambda q=queries: [
                        engine.match("vpdq", c, qualities=quals)[0] for c, quals in q]}  # fmt: skip
                    if hasattr(engine, "match_videos"):
                        ways["batched"] = lambda q=queries: engine.match_videos(q)
                    for way, run in ways.items():
                        cpu, digest, matches = _measure(run, args.runs)
                        print(f"| {size} | {n} {kind} | {way} | {1000 * cpu / n:.3f} |"
                              f" {matches} | {digest} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
