"""The media pool's admission gate: bounded, yet never refusing a request for good.

A request may carry up to ``max_media_items`` (16) items while the pool holds
``media_workers + media_queue`` (10) by default. Admitting only what fits made every
request of 11-16 items fail with RESOURCE_EXHAUSTED "retry with backoff", on an idle
server, forever.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from hashmatch.server.errors import Overloaded
from hashmatch.server.limits import MediaPool
from hashmatch.server.testing import running_server


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_idle_pool_admits_a_request_larger_than_its_capacity():
    pool = MediaPool(workers=1, queue=1)
    try:
        assert pool.run_all([lambda i=i: i for i in range(5)], timeout=lambda: 10.0) == list(
            range(5)
        )
        assert pool.pending == 0
    finally:
        pool.shutdown()


def test_busy_pool_refuses_what_does_not_fit_and_admits_again_once_idle():
    pool = MediaPool(workers=2, queue=1)  # capacity 3; one worker is held below
    started, release = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait(10)
        return "done"

    holder: list = []
    thread = threading.Thread(
        target=lambda: holder.extend(pool.run_all([blocked], timeout=lambda: 10.0))
    )
    thread.start()
    try:
        assert started.wait(10)
        assert pool.run_all([lambda: "fits"], timeout=lambda: 10.0) == ["fits"]  # 1 + 1 <= 3
        with pytest.raises(Overloaded, match=r"1 items pending, capacity 3"):
            pool.run_all([lambda: 1, lambda: 2, lambda: 3], timeout=lambda: 10.0)
        assert pool.pending == 1  # the refused request left nothing behind
    finally:
        release.set()
        thread.join(10)
        pool.shutdown()
    assert holder == ["done"]
    assert pool.pending == 0


def test_server_hashes_and_matches_max_media_items_in_one_request(tmp_path):
    """Over a real socket, default limits: 16 items (the documented maximum) per call."""
    media = [_png(i) for i in range(16)]
    with running_server(tmp_path / "data") as server:
        assert server.server.host.config.max_media_items == 16
        client = server.client()
        hashed = client.hash(media)
        assert len(hashed.items) == 16
        matched = client.match(media=media)
        assert len(matched.results) == 16
        assert all(r.computed for r in matched.results)
        # one more than the limit is still the client's mistake, not an overload
        with pytest.raises(grpc.RpcError) as err:
            client.hash([*media, _png(99)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _hold(pool: MediaPool, n: int, tenant: str | None) -> tuple[threading.Event, threading.Thread]:
    """``n`` items of ``tenant`` admitted and kept pending until the event is set."""
    release, admitted = threading.Event(), threading.Event()

    def run() -> None:
        jobs = [lambda: release.wait(10) for _ in range(n)]
        admitted.set()
        pool.run_all(jobs, timeout=lambda: 10.0, tenant=tenant)

    thread = threading.Thread(target=run)
    thread.start()
    assert admitted.wait(10)
    waited = threading.Event()
    for _ in range(1000):  # run_all admits them a moment after the thread starts
        if pool.pending >= n or waited.wait(0.01):
            break
    return release, thread


def test_a_full_pool_still_admits_another_tenant_up_to_its_fair_share():
    """One tenant's flood filled the pool and every other tenant was refused
    ("saturated") for as long as it lasted; now the others get their fair share."""
    pool = MediaPool(workers=1, queue=3)  # capacity 4
    held = [_hold(pool, 4, "flood")]
    try:
        with pytest.raises(Overloaded, match="saturated"):  # the flooding tenant: full
            pool.run_all([lambda: 0], timeout=lambda: 0.5, tenant="flood")
        held.append(_hold(pool, 2, "other"))  # its fair share: 4 // 2 = 2
        assert pool.pending == 6
        with pytest.raises(Overloaded, match="saturated"):  # its share is taken now
            pool.run_all([lambda: 0], timeout=lambda: 0.5, tenant="other")
        with pytest.raises(Overloaded, match="saturated"):  # no share in no-auth mode
            pool.run_all([lambda: 0], timeout=lambda: 0.5, tenant=None)
    finally:
        for release, _ in held:
            release.set()
        for _, thread in held:
            thread.join(10)
    assert pool.pending == 0
    pool.shutdown()


def test_one_tenant_alone_gets_the_whole_pool_as_before():
    pool = MediaPool(workers=1, queue=3)  # capacity 4
    release, thread = _hold(pool, 3, "only")
    try:
        with pytest.raises(Overloaded, match="3 items pending, capacity 4"):
            pool.run_all([lambda: 1, lambda: 2], timeout=lambda: 0.5, tenant="only")
    finally:
        release.set()
        thread.join(10)
        pool.shutdown()


def test_over_a_socket_a_full_pool_refuses_the_flooding_tenant_not_another(tmp_path):
    """Each call takes its own tenant's share (``Call.share``): with the pool full of
    one tenant's items, that tenant is refused and another's Hash and Match go through."""
    tenants = {"flood": (["match"], True), "other": (["match"], True)}
    with running_server(tmp_path, tenants=tenants, media_workers=1, media_queue=3) as ts:
        pool = ts.server.host.media
        release, thread = _hold(pool, 4, "flood")
        try:
            with pytest.raises(grpc.RpcError) as err:
                ts.client("flood", retries=0).hash([_png(1)])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            other = ts.client("other", retries=0)
            with ThreadPoolExecutor(2) as calls:
                hashed = calls.submit(other.hash, [_png(2)])
                matched = calls.submit(other.match, media=[_png(3)])
                for _ in range(1000):  # both admitted: queued behind the flood's items
                    if pool.pending == 6 or hashed.done() or matched.done():
                        break
                    threading.Event().wait(0.01)
                release.set()
                assert len(hashed.result(30).items) == 1
                assert matched.result(30).results[0].computed
        finally:
            release.set()
            thread.join(10)
        assert pool.pending == 0
