"""Bounded work: the media-hashing pool and its admission gate.

Why separate from the gRPC worker threads: decoding and hashing a large image
takes tens of milliseconds of CPU, a hash lookup well under one. Media work runs
on its own small pool behind a bounded gate, so a flood of large images gets
RESOURCE_EXHAUSTED instead of queueing without bound and starving lookups.
Threads rather than processes: Pillow/OpenCV decoding and the numpy/numba PDQ
kernels release the GIL for the heavy parts, and results need no pickling.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from hashmatch.server.errors import Cancelled, DeadlineExceeded, Overloaded

T = TypeVar("T")


class MediaPool:
    """At most ``workers`` items hash at once and ``queue`` more wait; the rest are refused."""

    def __init__(self, workers: int, queue: int, on_change: Callable[[int], None] | None = None):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="media")
        self._capacity = workers + queue
        self._pending = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def pending(self) -> int:
        return self._pending

    def _admit(self, n: int) -> None:
        """Admit ``n`` items together, or refuse them all.

        An idle pool admits any one request, even one of more items than the capacity
        (the request's own limit, ``max_media_items``, bounds it): refusing it would be
        final, since no retry could ever fit, yet the refusal says to retry.
        """
        with self._lock:
            if self._pending and self._pending + n > self._capacity:
                raise Overloaded(
                    f"media hashing is saturated ({self._pending} items pending, capacity "
                    f"{self._capacity}); retry with backoff"
                )
            self._pending += n
            pending = self._pending
        if self._on_change:
            self._on_change(pending)

    def _release(self, _future: Future | None = None) -> None:
        with self._lock:
            self._pending -= 1
            pending = self._pending
        if self._on_change:
            self._on_change(pending)

    def run_all(
        self,
        jobs: list[Callable[[], T]],
        *,
        timeout: Callable[[], float | None],
        is_active: Callable[[], bool] = lambda: True,
    ) -> list[T]:
        """Run every job (admitted all together or refused), wait within the deadline.

        ``timeout()`` gives the seconds left on the call (None = no deadline). On a
        deadline or a cancelled call the jobs not yet started are cancelled.
        """
        if not jobs:
            return []
        self._admit(len(jobs))
        futures: list[Future] = []
        try:
            for job in jobs:
                future = self._executor.submit(job)
                future.add_done_callback(self._release)
                futures.append(future)
        except RuntimeError:  # executor shut down
            for _ in range(len(jobs) - len(futures)):
                self._release()
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
