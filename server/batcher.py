"""Natural batching of concurrent hash lookups into one engine call.

Why: the index answers a batch of queries far cheaper per query than one at a
time (one pass over memory, one call into FAISS, both cores busy); upload
pipelines send one hash per call. Requests with the same lookup options that
arrive while a batch is running are merged into the next one. Nothing waits on
a timer: an idle server looks a single request up at once, so batching adds no
latency at low load and only ever groups requests that were queueing anyway.

At most ``threads`` engine calls run at once. A request that finds the batcher idle
(no lookup running, nothing queued) runs its lookup inline, on the calling thread:
the same engine call a lookup thread would make for a batch of one, without the
hand-off there and back (two thread wake-ups, each a GIL hand-over). Requests that
arrive while a lookup runs queue up and are merged by the lookup threads, so under
load batching is as before (letting every free slot run inline measured no better
at 64 callers: more engine calls of one row each).

Bounded: more than ``max_pending`` queued rows is RESOURCE_EXHAUSTED, except for a
tenant under its fair share while others fill the queue (``limits.TenantShares``). A
request whose deadline passes before its batch starts is dropped from the batch.
Fair: with several tenants queued, batches take turns between them (the oldest item
of the tenant served least recently leads the next), so one tenant's backlog does not
delay every other tenant's lookup by its whole length, nor two tenants' backlogs a
third's.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from hashmatch.server.errors import DeadlineExceeded, Overloaded
from hashmatch.server.limits import TenantShares

Key = tuple  # (type, tenant, threshold, lists, max_results, min_quality, low_quality_queries)


@dataclass
class _Item:
    key: Key
    codes: np.ndarray
    qualities: list[int | None] | None
    share: str | None = None  # whose share of the queue (None: no-auth mode)
    future: Future = field(default_factory=Future)


class LookupBatcher:
    """``lookup(key, codes, qualities)`` -> one result list per row, batched across callers."""

    def __init__(
        self,
        run: Callable[[Key, np.ndarray, list[int | None] | None], list],
        *,
        threads: int = 2,
        max_batch: int = 512,
        max_pending: int = 20_000,
    ):
        self._run = run
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._queue: deque[_Item] = deque()
        self._pending_rows = 0
        self._shares = TenantShares()
        self._queued_by_share: dict[str | None, int] = {}  # items queued per share
        # the turn at which each share was last served (led a batch or ran inline):
        # one entry per tenant that ever looked up, a handful
        self._served: dict[str | None, int] = {}
        self._turns = 0
        self._slots = threads
        self._busy = 0  # engine calls running (inline or on a lookup thread)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"lookup-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def lookup(
        self,
        key: Key,
        codes: np.ndarray,
        qualities: Sequence[int | None] | None,
        *,
        timeout: Callable[[], float | None],
        share: str | None = None,
    ) -> list:
        """The rows' results; ``share``: the calling tenant (None: no-auth mode)."""
        with self._cond:
            if self._closed:
                raise Overloaded("the server is shutting down")
            inline = not self._queue and self._busy == 0
            if inline:
                self._busy += 1
                self._serve(share)
            else:
                if self._pending_rows + len(codes) > self._max_pending and not (
                    self._shares.under_fair_share(share, self._max_pending)
                ):
                    raise Overloaded(
                        f"{self._pending_rows} hash lookups are queued"
                        f" (limit {self._max_pending}); retry with backoff"
                    )
                quals = list(qualities) if qualities is not None else None
                item = _Item(key, codes, quals, share)
                self._queue.append(item)
                self._pending_rows += len(codes)
                self._shares.add(share, len(codes))
                self._queued_by_share[share] = self._queued_by_share.get(share, 0) + 1
                self._cond.notify()
        if inline:
            return self._run_inline(key, codes, qualities, timeout)
        left = timeout()
        try:
            return item.future.result(timeout=left)
        except FutureTimeout:
            item.future.cancel()  # dropped if its batch has not started
            raise DeadlineExceeded("deadline passed while waiting for the index") from None

    def _run_inline(
        self,
        key: Key,
        codes: np.ndarray,
        qualities: Sequence[int | None] | None,
        timeout: Callable[[], float | None],
    ) -> list:
        """A batch of one on the caller's thread (the batcher was idle; the caller holds a slot)."""
        try:
            left = timeout()
            if left is not None and left <= 0:
                raise DeadlineExceeded("deadline passed before the lookup started")
            return self._run(key, codes, list(qualities) if qualities is not None else None)
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        with self._cond:
            self._busy -= 1
            if self._queue:  # queued while lookups ran: a lookup thread merges them
                self._cond.notify()

    def _take(self) -> list[_Item]:
        """The leading item plus every queued item with the same key (up to max_batch rows).

        The leading item is the oldest, or with several tenants queued the oldest of
        the tenant served least recently. Waits for a free slot; once
        closed, the queue is drained regardless.
        """
        with self._cond:
            while not self._closed and (not self._queue or self._busy >= self._slots):
                self._cond.wait()
            if not self._queue:
                return []
            self._busy += 1
            first = self._next_leader()
            self._serve(first.share)
            batch, rows = [first], len(first.codes)
            keep: deque[_Item] = deque()
            while self._queue:
                item = self._queue.popleft()
                if item.key == first.key and rows + len(item.codes) <= self._max_batch:
                    batch.append(item)
                    rows += len(item.codes)
                else:
                    keep.append(item)
            keep.extend(self._queue)
            self._queue = keep
            self._pending_rows -= rows
            for item in batch:
                self._shares.remove(item.share, len(item.codes))
                left = self._queued_by_share[item.share] - 1
                if left:
                    self._queued_by_share[item.share] = left
                else:
                    del self._queued_by_share[item.share]
            return batch

    def _serve(self, share: str | None) -> None:
        """``share`` takes a turn now (the lock is held)."""
        self._served[share] = self._turns
        self._turns += 1

    def _next_leader(self) -> _Item:
        """Pop the item that leads the next batch (see ``_take``); the queue is not empty.

        Why the tenant served least recently, not merely another than the last leader:
        with three tenants queued, the two oldest backlogs alternated and the third
        waited for one of them to drain."""
        if len(self._queued_by_share) > 1:  # scan only when tenants must take turns
            share = min(self._queued_by_share, key=lambda s: self._served.get(s, -1))
            for i, item in enumerate(self._queue):
                if item.share == share:
                    del self._queue[i]
                    return item
        return self._queue.popleft()

    def _worker(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self._run_batch(batch)
            finally:
                self._free_slot()

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            codes = live[0].codes if len(live) == 1 else np.concatenate([i.codes for i in live])
            if any(i.qualities is not None for i in live):
                qualities = [q for i in live for q in (i.qualities or [None] * len(i.codes))]
            else:
                qualities = None
            results = self._run(live[0].key, codes, qualities)
        except BaseException as exc:  # the same options: the same error for all
            for item in live:
                item.future.set_exception(exc)
            return
        start = 0
        for item in live:
            item.future.set_result(results[start : start + len(item.codes)])
            start += len(item.codes)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
