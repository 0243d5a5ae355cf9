"""Bounded work: the media-hashing pool and its admission gate.

Why separate from the gRPC worker threads: decoding and hashing a large image
takes tens of milliseconds of CPU, a hash lookup well under one. Media work runs
on its own small pool behind a bounded gate, so a flood of large images gets
RESOURCE_EXHAUSTED instead of queueing without bound and starving lookups.
Threads rather than processes: Pillow/OpenCV decoding and the numpy/numba PDQ
kernels release the GIL for the heavy parts, and results need no pickling.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from hashmatch.server.errors import Cancelled, DeadlineExceeded, Overloaded

T = TypeVar("T")


class TenantShares:
    """What each tenant holds of a bounded resource, and whether it is under its fair share.

    Why: the media pool and the lookup queue are shared by every tenant. One tenant's
    flood could fill either, and then every other tenant was refused ("saturated")
    for as long as the flood lasted. Now a tenant that holds less than its fair share
    (the capacity divided among the tenants holding something, itself included) is
    admitted even when the resource is full: a flood slows others down, it cannot
    shut them out. With one tenant, or in no-auth mode (``None``: no tenants to
    share with), the capacity alone decides, as before. Overcommit is bounded: each
    tenant can pass the capacity only up to its fair share plus one request.
    Not locked: callers hold their own lock.
    """

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def held(self, tenant: str | None) -> int:
        return 0 if tenant is None else self._held.get(tenant, 0)

    def under_fair_share(self, tenant: str | None, capacity: int) -> bool:
        """True when other tenants hold something and ``tenant`` holds less than its
        fair share of ``capacity``."""
        if tenant is None:
            return False
        held = self.held(tenant)
        others = len(self._held) - (1 if held else 0)
        return others > 0 and held < capacity // (others + 1)

    def add(self, tenant: str | None, n: int) -> None:
        if tenant is not None:
            self._held[tenant] = self._held.get(tenant, 0) + n

    def remove(self, tenant: str | None, n: int) -> None:
        if tenant is None:
            return
        left = self._held.get(tenant, 0) - n
        if left > 0:
            self._held[tenant] = left
        else:
            self._held.pop(tenant, None)


class MediaPool:
    """At most ``workers`` items hash at once and ``queue`` more wait; the rest are
    refused, except a tenant's fair share when others fill the pool (``TenantShares``)."""

    def __init__(self, workers: int, queue: int, on_change: Callable[[int], None] | None = None):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="media")
        self._capacity = workers + queue
        self._pending = 0
        self._shares = TenantShares()
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def pending(self) -> int:
        return self._pending

    def _admit(self, n: int, tenant: str | None) -> None:
        """Admit ``n`` items together, or refuse them all.

        An idle pool admits any one request, even one of more items than the capacity
        (the request's own limit, ``max_media_items``, bounds it): refusing it would be
        final, since no retry could ever fit, yet the refusal says to retry. A full
        pool admits a tenant under its fair share (see ``TenantShares``).
        """
        with self._lock:
            if (
                self._pending
                and self._pending + n > self._capacity
                and not self._shares.under_fair_share(tenant, self._capacity)
            ):
                raise Overloaded(
                    f"media hashing is saturated ({self._pending} items pending, capacity "
                    f"{self._capacity}); retry with backoff"
                )
            self._pending += n
            self._shares.add(tenant, n)
            pending = self._pending
        if self._on_change:
            self._on_change(pending)

    def _release(self, tenant: str | None, _future: Future | None = None) -> None:
        with self._lock:
            self._pending -= 1
            self._shares.remove(tenant, 1)
            pending = self._pending
        if self._on_change:
            self._on_change(pending)

    def run_all(
        self,
        jobs: list[Callable[[], T]],
        *,
        timeout: Callable[[], float | None],
        is_active: Callable[[], bool] = lambda: True,
        tenant: str | None = None,
    ) -> list[T]:
        """Run every job (admitted all together or refused), wait within the deadline.

        ``timeout()`` gives the seconds left on the call (None = no deadline). On a
        deadline or a cancelled call the jobs not yet started are cancelled. ``tenant``:
        whose share the jobs take (None: no share).
        """
        if not jobs:
            return []
        self._admit(len(jobs), tenant)
        release = functools.partial(self._release, tenant)
        futures: list[Future] = []
        try:
            for job in jobs:
                future = self._executor.submit(job)
                future.add_done_callback(release)
                futures.append(future)
        except RuntimeError:  # executor shut down
            for _ in range(len(jobs) - len(futures)):
                release()
            for f in futures:
                f.cancel()
            raise
        results: list[T] = []
        try:
            for future in futures:
                while True:
                    left = timeout()
                    if left is not None and left <= 0:
                        raise DeadlineExceeded("deadline passed while hashing media")
                    if not is_active():
                        raise Cancelled("call cancelled while hashing media")
                    try:
                        results.append(
                            future.result(timeout=0.05 if left is None else min(left, 0.05))
                        )
                        break
                    except FutureTimeout:
                        continue
        except (DeadlineExceeded, Cancelled, CancelledError):
            for f in futures:
                f.cancel()
            raise
        return results

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
