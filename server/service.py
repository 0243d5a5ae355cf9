"""The gRPC servicers: thin (validate -> call the engine -> build the reply).

Authentication, roles, logging, metrics and error mapping come from
:func:`hashmatch.server.calls.rpc`; request parsing from :mod:`.convert` and
:mod:`.matching`; the shared state (engine, config, pools) from
:class:`hashmatch.server.app.ServiceHost`.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from hashmatch.engine.errors import Conflict, HashmatchError, SnapshotFailed
from hashmatch.engine.runtime import Progress, RebuildStopped
from hashmatch.engine.store_lock_wait import SLICE_SECONDS, wanted_while
from hashmatch.server import changes, errors, ingest, matching, violations
from hashmatch.server.calls import Call, rpc
from hashmatch.server.errors import DiskFull, NotServing
from hashmatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    matcher_pb2,
    matcher_pb2_grpc,
    signals_pb2,
    signals_pb2_grpc,
)

if TYPE_CHECKING:
    from hashmatch.engine.runtime import Engine
    from hashmatch.server.app import ServiceHost

log = logging.getLogger("hashmatch.server")


class MatcherService(matcher_pb2_grpc.MatcherServicer):
    def __init__(self, host: ServiceHost):
        self.host = host

    @rpc("match")
    def Match(self, request: matcher_pb2.MatchRequest, call: Call) -> matcher_pb2.MatchResponse:
        return matching.match(self.host, request, call)

    @rpc("match", request_stream=True)
    def MatchStream(
        self, request_iterator: Iterator[matcher_pb2.MatchRequest], call: Call
    ) -> Iterator[matcher_pb2.MatchResponse]:
        # matching.match sets the log's queries/matches per message: the access-log
        # line sums them over the stream (also when it ends early), as the metrics do
        totals = {"messages": 0, "queries": 0, "matches": 0}
        # each message is a lookup as a Match call is: its latency, which the stream's
        # duration (hashmatch_stream_seconds) does not tell
        latency = self.host.metrics.stream_message_latency.labels("MatchStream")
        try:
            for n, request in enumerate(request_iterator):
                started = time.perf_counter()
                call.check_deadline()
                try:
                    response = matching.match(self.host, request, call)
                except HashmatchError as exc:
                    # Name the stream message as well as the field (and item) inside it:
                    # every field of a request refused for several.
                    violations.nest(exc, f"stream[{n}]")
                    raise
                totals["messages"] += 1
                totals["queries"] += call.log.get("queries", 0)
                totals["matches"] += call.log.get("matches", 0)
                latency.observe(time.perf_counter() - started)
                yield response
        finally:
            call.log.update(totals)

    @rpc("match", needs_index=False)
    def Hash(self, request: matcher_pb2.HashRequest, call: Call) -> matcher_pb2.HashResponse:
        return matching.hash_only(self.host, request, call)


class SignalsService(signals_pb2_grpc.SignalsServicer):
    def __init__(self, host: ServiceHost):
        self.host = host

    @rpc("write", request_stream=True)
    def Ingest(
        self, request_iterator: Iterator[signals_pb2.IngestRequest], call: Call
    ) -> signals_pb2.IngestResponse:
        return ingest.ingest(self.host, request_iterator, call)

    @rpc("write")
    def Retract(
        self, request: signals_pb2.RetractRequest, call: Call
    ) -> signals_pb2.RetractResponse:
        try:
            return ingest.retract(self.host, request, call)
        except (OSError, sqlite3.Error) as exc:
            if not errors.is_disk_full(exc):
                raise
            raise self._disk_full(exc, "nothing of this call was retracted") from exc

    def _disk_full(self, exc: BaseException, kept: str) -> DiskFull:
        """A full disk worded for the caller: the data dir, and what was kept."""
        data_dir = str(self.host.config.data_dir)
        return DiskFull(errors.disk_full_message(exc, data_dir=data_dir, kept=kept))

    @rpc("match")
    def ListHashLists(
        self, request: signals_pb2.ListHashListsRequest, call: Call
    ) -> signals_pb2.ListHashListsResponse:
        lists = self.host.engine_lists(call.principal.engine_tenant)
        store_id = self.host.engine.store.store_id()
        return signals_pb2.ListHashListsResponse(
            lists=lists, tenant=call.principal.tenant, store_id=store_id
        )

    # The change log hands over every hash of the lists shared with the caller, more
    # than Match reveals: its own "export" role, scoped by tenant like Match. A stream
    # slot: a client that does not read the replies holds the thread (see calls.rpc).
    @rpc("export", slot=True)
    def Changes(
        self, request: signals_pb2.ChangesRequest, call: Call
    ) -> Iterator[signals_pb2.ChangesResponse]:
        yield from changes.changes(self.host, request, call)

    @rpc("match")
    def SignalStates(
        self, request: signals_pb2.SignalStatesRequest, call: Call
    ) -> signals_pb2.SignalStatesResponse:
        return changes.signal_states(self.host, request, call)


class _CallerGone(HashmatchError):
    """A rebuild's store write gave up waiting for another process's write lock: its
    caller went away (deadline, cancel). Every store write of a rebuild comes after the
    swap, so the rebuilt index is live by then; what was left is not written."""


#: how the log says what a rebuild that gave up a lock wait left undone
_GAVE_UP = (
    "the rebuilt index is live (it was swapped in before any store write), but what was"
    " left of the rebuild (the lists' recount, its audit row, the snapshot) was not"
    " written: take a Snapshot (or rebuild again) once that process is done"
)


def _outcome(summary: dict) -> str:
    """A finished rebuild's outcome for the metrics (see metrics.REBUILD_OUTCOMES)."""
    if summary.get("snapshot_error"):
        return "snapshot_failed"
    return "ok" if summary.get("snapshot") is not None else "stopped"


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, host: ServiceHost):
        self.host = host
        self._rebuilding = threading.Lock()

    # The admin role is the server operator's, store-wide by definition: RebuildIndex
    # and Snapshot act on every tenant's indexes, and Stats' counts, memory and the
    # summaries' snapshot paths are the whole server's. Without all_lists, only other
    # tenants' list names are kept back (README, "What one tenant cannot learn").
    @rpc("admin")
    def Stats(self, request: admin_pb2.StatsRequest, call: Call) -> admin_pb2.StatsResponse:
        reply = self.host.stats_pb()
        tenant = call.principal.engine_tenant
        if tenant is not None:  # the admin role without all_lists: name its own lists only
            mine = {info.name for info in self.host.engine.store.lists(tenant=tenant)}
            kept = [s for s in reply.lists if s.name in mine]
            del reply.lists[:]
            reply.lists.extend(kept)
            details = json.loads(reply.details_json or "{}")
            if isinstance(details.get("lists"), dict):
                details["lists"] = {k: v for k, v in details["lists"].items() if k in mine}
            reply.details_json = json.dumps(details, default=str, sort_keys=True)
        return reply

    @rpc("admin")
    def RebuildIndex(
        self, request: admin_pb2.RebuildIndexRequest, call: Call
    ) -> Iterator[admin_pb2.RebuildProgress]:
        if not self._rebuilding.acquire(blocking=False):
            raise Conflict("a rebuild is already running", field="RebuildIndex")
        events: queue.Queue = queue.Queue()
        left = threading.Event()  # the call ended before the rebuild: nobody reads events

        def progress(stage: str, done: int, total: int) -> None:
            events.put(admin_pb2.RebuildProgress(stage=stage, done=done, total=total))

        def still_wanted() -> None:
            # asked while a write of the rebuild waits for another process's write lock
            # (see store_lock_wait): as for Ingest, the wait ends once the caller is gone
            if left.is_set() or _gone(call):
                raise _CallerGone(
                    "its caller went away while another process held the store's write lock"
                )

        def work() -> None:
            # the metrics are set before the caller hears the end: a scrape after the
            # final message sees this rebuild
            began = time.perf_counter()
            try:
                with wanted_while(still_wanted):
                    summary = self._rebuild(progress, call.principal.tenant)
            except RebuildStopped as exc:
                self.host.metrics.rebuilt(time.perf_counter() - began, "stopped")
                if left.is_set():  # nobody hears the error below: the log says how it ended
                    log.info("rebuild: stopped by the server's stop after its caller went"
                             " away: %s", exc)  # fmt: skip
                events.put(("error", NotServing(f"the server is shutting down: {exc}")))
            except _CallerGone as exc:
                self.host.metrics.rebuilt(time.perf_counter() - began, "stopped")
                log.warning("rebuild: %s; %s", exc, _GAVE_UP)
            except BaseException as exc:  # handed to the RPC thread to map
                self.host.metrics.rebuilt(time.perf_counter() - began, "failed")
                if left.is_set():
                    log.exception("rebuild: failed after its caller went away")
                events.put(("error", exc))
            else:
                self.host.metrics.rebuilt(time.perf_counter() - began, _outcome(summary))
                if left.is_set():  # the access log has the call, not how the rebuild ended
                    log.info("rebuild: finished after its caller went away: %s",
                             json.dumps(summary, default=str))  # fmt: skip
                events.put(("done", summary))
            finally:
                self._rebuilding.release()

        # The rebuild runs to completion even if the caller goes away: a half-built
        # index is never swapped in, and the store stays the source of truth. Only a
        # server stop ends it early (stop() waits for it before closing the store), or,
        # once its caller is gone, a store write that would wait for another process's
        # write lock (still_wanted: the index is live by then, the log says what is not).
        try:
            self.host.run_background("rebuild", work)
        except BaseException:
            self._rebuilding.release()
            raise
        try:
            yield from self._progress(events, call)
        finally:
            left.set()

    def _progress(self, events: queue.Queue, call: Call) -> Iterator[admin_pb2.RebuildProgress]:
        """The rebuild's progress as it comes, then its summary. Between messages the
        call's deadline and cancel are checked every :data:`SLICE_SECONDS`: a caller
        gone while the rebuild is silent (a long build step, a write waiting for another
        process's lock) frees this thread at once, not when the rebuild next speaks."""
        started = time.perf_counter()
        while True:
            try:
                event = events.get(timeout=SLICE_SECONDS)
            except queue.Empty:
                _check_caller(call, stopping=self.host.stopping)
                continue
            if isinstance(event, tuple) and event[0] == "error":
                raise event[1]  # ends the call: the log says why (e.g. the server stopping)
            # as Changes does per message: a token removed (SIGHUP) since the call began
            # gets no more progress nor the summary (UNAUTHENTICATED); the rebuild itself
            # runs on (see above). A caller gone (or cut by a stop) ends the call at the
            # next yield, logged CANCELLED / DEADLINE_EXCEEDED by calls.rpc.
            if call.recheck is not None:
                call.recheck()
            if isinstance(event, tuple):
                _, value = event
                call.log["rebuild_s"] = round(time.perf_counter() - started, 3)
                call.log["snapshot"] = value.get("snapshot")
                yield admin_pb2.RebuildProgress(
                    stage="done",
                    finished=True,
                    summary_json=json.dumps(value, default=str),
                    snapshot_error=value.get("snapshot_error", ""),
                )
                return
            yield event

    def _rebuild(self, progress: Progress, actor: str) -> dict:
        """Rebuild, then snapshot the new indexes (as ``hashmatch index rebuild`` does),
        so the next start loads them instead of replaying onto the old snapshot or
        reading the whole store. The summary names the snapshot (None when the server
        began stopping after the swap: the snapshot is skipped, not waited for)."""
        engine = self.host.engine
        summary = engine.rebuild_index(
            progress=progress, actor=actor, stop=lambda: self.host.stopping
        )
        summary["snapshot"] = None
        if not self.host.stopping:
            progress("snapshot", 0, 1)
            summary["snapshot"] = self._snapshot_after_rebuild(engine, actor, summary)
            if summary["snapshot"] is not None:
                progress("snapshot", 1, 1)
        return summary

    @staticmethod
    def _snapshot_after_rebuild(engine: Engine, actor: str, summary: dict) -> str | None:
        """The snapshot's path; None, with ``summary["snapshot_error"]`` saying why, when
        it could not be written (a full disk): the rebuilt index is live by now, so the
        call reports its summary rather than failing as if the rebuild had (the final
        RebuildProgress carries it as ``snapshot_error``, and in ``summary_json``)."""
        try:
            return str(engine.snapshot(actor=actor))
        except (SnapshotFailed, OSError, sqlite3.Error) as exc:
            full = errors.is_disk_full(exc)
            if not (full or isinstance(exc, SnapshotFailed)):
                raise  # not the disk: a bug, reported as one
            why = str(exc) if isinstance(exc, SnapshotFailed) else f"the disk is full: {exc}"
            summary["snapshot_error"] = (
                f"the rebuilt index is live, but its snapshot failed: {why}; take one with"
                f" Snapshot once {'there is room' if full else 'that is fixed'}"
            )
            log.error("rebuild: %s", summary["snapshot_error"])
            return None

    @rpc("admin")
    def Snapshot(
        self, request: admin_pb2.SnapshotRequest, call: Call
    ) -> admin_pb2.SnapshotResponse:
        path = self.host.engine.snapshot(actor=call.principal.tenant)
        call.log["path"] = str(path)
        return admin_pb2.SnapshotResponse(path=str(path))


def _gone(call: Call) -> bool:
    """The call's deadline passed or its client cancelled (from any thread)."""
    left = call.time_left()
    return (left is not None and left <= 0) or not call.context.is_active()


def _check_caller(call: Call, *, stopping: bool) -> None:
    """:meth:`Call.check_deadline` for a RebuildIndex call, whose status then says what
    becomes of the rebuild: it goes on without its caller, or, when the server's stop
    ended the call, gives up at its next step (UNAVAILABLE, as the rebuild's own end)."""
    try:
        call.check_deadline()
    except (errors.DeadlineExceeded, errors.Cancelled) as exc:
        if stopping and isinstance(exc, errors.Cancelled):
            raise NotServing(
                "the server is shutting down; the rebuild gives up at its next step"
            ) from None
        raise type(exc)(
            f"{exc.message}; the rebuild goes on in the background (the server logs how it ends)"
        ) from None
