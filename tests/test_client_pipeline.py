"""The client as an upload pipeline uses it, over a real socket: calls without a
deadline, retries through a restart or an index load, ingest progress on failure,
large retractions, PEM text for TLS."""

from __future__ import annotations

import threading

import grpc
import numpy as np

from hashmatch.server.client import signal
from hashmatch.server.testing import running_server


def _hexes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [row.tobytes().hex() for row in rng.integers(0, 256, (n, 32), dtype=np.uint8)]


def test_calls_without_a_deadline_succeed_while_lookups_overlap(tmp_path):
    """grpcio's "no deadline" is a huge remaining time; waiting on it overflowed
    (OverflowError -> INTERNAL) whenever a lookup queued behind another."""
    stored = _hexes(50, seed=1)
    with running_server(tmp_path) as ts:
        writer = ts.client()
        writer.ingest("pipeline", [signal("pdq", h, external_id=h[:8]) for h in stored])
        client = ts.client(timeout=None)  # no deadline at all, as a long-lived pipeline
        errors: list[str] = []
        wrong = [0]

        def unary(k: int) -> None:
            for j in range(100):
                h = stored[(k * 100 + j) % len(stored)]
                try:
                    reply = client.match([("pdq", h)], threshold=0)
                except grpc.RpcError as exc:
                    errors.append(f"unary {exc.code().name}: {exc.details()}")
                    continue
                if [m.distance for m in reply.results[0].matches] != [0]:
                    wrong[0] += 1

        def stream(k: int) -> None:
            ids = [f"s{k}-{j}" for j in range(200)]
            requests = (
                client.match_request([("pdq", stored[j % len(stored)])], threshold=0, request_id=i)
                for j, i in enumerate(ids)
            )
            try:
                replies = list(client.match_stream(requests, timeout=None))
            except grpc.RpcError as exc:
                errors.append(f"stream {exc.code().name}: {exc.details()}")
                return
            if [r.request_id for r in replies] != ids:
                wrong[0] += 1
            wrong[0] += sum(len(r.results[0].matches) != 1 for r in replies)

        threads = [threading.Thread(target=unary, args=(k,)) for k in range(4)]
        threads += [threading.Thread(target=stream, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert wrong[0] == 0
