"""Prometheus metrics, served on their own HTTP port (not the gRPC port).

Each server owns a registry (tests run several servers in one process).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: How long a streaming call stays open: a MatchStream or a Changes follower may be
#: held for hours, an Ingest of a large list or a rebuild for minutes.
STREAM_BUCKETS = (
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0,
    86400.0,
)  # fmt: skip

#: Connections to /metrics served at once; more are answered 503 and closed at once.
METRICS_CONNECTIONS = 16
#: Seconds a /metrics connection may take to send its request (and read the reply)
#: before it is closed: Prometheus' default scrape timeout.
METRICS_CLIENT_TIMEOUT = 10.0

_BUSY_REPLY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close"
    b"\r\n\r\ntoo many open /metrics connections\n"
)


def _version() -> str:
    """The installed hashmatch's version ("unknown" when run from a bare checkout)."""
    try:
        return importlib.metadata.version("hashmatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _QuietHandler(WSGIRequestHandler):
    """One /metrics request, no access line on stderr; ``timeout`` set per server."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _cut(request: socket.socket) -> None:
    """End a connection past its time: its handler's blocked read or write returns."""
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_RDWR)


class _BoundedMetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's thread-per-connection server, with a cap and a timeout.

    Why: its server gave every connection a thread for as long as the client kept it
    open, with no timeout: 2,000 idle connections sending half a request held 2,000
    threads and file descriptors of the gRPC server's process for good (the descriptors
    gRPC needs to accept clients; past the limit new gRPC clients hang). Now at most
    ``limit`` at once, each closed ``timeout`` seconds after it was accepted (in all,
    not per read: a client dribbling a byte at a time is cut too); more are refused at once
    on the accepting thread (503), so the metrics port can lose its scrapes to a flood
    but not take the gRPC service down with it.
    """

    daemon_threads = True
    limit = METRICS_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # before the bind: a port in use makes socketserver call server_close, which
        # must find _closing (set in server_activate, it raised AttributeError instead)
        self._slots = threading.BoundedSemaphore(self.limit)
        self._open: dict[Any, float] = {}  # connection -> monotonic deadline
        self._open_lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__(*args, **kwargs)

    def server_activate(self) -> None:
        threading.Thread(target=self._cut_overdue, name="metrics-cutoff", daemon=True).start()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.send(_BUSY_REPLY, socket.MSG_DONTWAIT)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # the handler's timeout is per read: a client sending a byte now and then kept
        # its slot for good; the whole connection gets that long (see _cut_overdue)
        with self._open_lock:
            self._open[request] = time.monotonic() + self.RequestHandlerClass.timeout
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)
            self._slots.release()

    def _cut_overdue(self) -> None:
        """One thread for all connections (not a timer each: a thread per connection is
        what the cap bounds): ends those open past their time."""
        period = min(1.0, max(0.05, self.RequestHandlerClass.timeout / 4))
        while not self._closing.wait(period):
            now = time.monotonic()
            with self._open_lock:
                overdue = [r for r, deadline in self._open.items() if deadline <= now]
            for request in overdue:
                _cut(request)

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or hung up is not worth a traceback on stderr."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _IndexState:
    """Per-type index rows and the snapshot's time, read from the engine on each scrape
    (both O(1)); nothing before the index is loaded."""

    def __init__(self) -> None:
        self.sizes: Callable[[], dict[str, int]] | None = None
        self.snapshot_at: Callable[[], float | None] | None = None

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        rows = GaugeMetricFamily(
            "hashmatch_index_rows",
            "Rows in the live index of each signal type (one per frame of a vPDQ video)",
            labels=["signal_type"],
        )
        snapshot = GaugeMetricFamily(
            "hashmatch_index_snapshot_timestamp_seconds",
            "When the newest index snapshot this server loaded or wrote was made (a start"
            " replays the change log since; absent: none)",
        )
        with contextlib.suppress(Exception):  # a scrape must never fail
            for signal_type, n in sorted((self.sizes() if self.sizes else {}).items()):
                rows.add_metric([signal_type], float(n))
        with contextlib.suppress(Exception):
            at = self.snapshot_at() if self.snapshot_at else None
            if at:
                snapshot.add_metric([], float(at))
        return [rows, snapshot]


#: How a RebuildIndex ended: ``ok`` (swapped in, snapshot written), ``snapshot_failed``
#: (swapped in and serving, no snapshot: a full disk), ``stopped`` (the server began
#: stopping: given up, or its snapshot skipped), ``failed`` (an error; the old index serves).
REBUILD_OUTCOMES = ("ok", "snapshot_failed", "stopped", "failed")


class _LastRebuild:
    """The last index rebuild's duration and end time; both absent until one ended
    (a plain Gauge would show 0: a rebuild that took 0 s, at 1970)."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.ended_at: float | None = None

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        seconds = GaugeMetricFamily(
            "hashmatch_index_rebuild_seconds",
            "How long the last index rebuild (RebuildIndex: build, swap, snapshot) took,"
            " whatever its outcome (absent: none since the server started)",
        )
        ended = GaugeMetricFamily(
            "hashmatch_index_rebuild_timestamp_seconds",
            "When the last index rebuild ended, whatever its outcome (absent: none since"
            " the server started)",
        )
        if self.seconds is not None and self.ended_at is not None:
            seconds.add_metric([], self.seconds)
            ended.add_metric([], self.ended_at)
        return [seconds, ended]


class _MatchesOfLiveLists:
    """Collects ``hashmatch_matches_total`` after dropping the series of lists that no
    longer exist (:meth:`Metrics.prune_matches`), so a scrape never shows them."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self) -> Iterable[Any]:
        return self._metrics.matches.describe()

    def collect(self) -> Iterable[Any]:
        with contextlib.suppress(Exception):  # a scrape must never fail: kept till the next
            self._metrics.prune_matches()
        return self._metrics.matches.collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # memory, CPU, open files (past the limit new clients hang): what the default
        # registry would have had; Linux only (prometheus_client reads /proc)
        ProcessCollector(registry=self.registry)
        # which build answers: a fleet mid-upgrade, or a dashboard's jump that began
        # with a release, is told apart by this (the standard *_build_info pattern)
        Info("hashmatch_build", "The hashmatch build serving", registry=self.registry).info(
            {"version": _version(), "python": platform.python_version()}
        )
        self.requests = Counter(
            "hashmatch_requests",
            "RPCs finished, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        # counted as gRPC hands a call over (app.AuthGate), before its thread queue and
        # its max_concurrent_rpcs check: what requests_total cannot see (a refusal by
        # gRPC itself, a call whose deadline passed or that was cancelled while queued
        # for a thread) is received - requests - inflight
        self.received = Counter(
            "hashmatch_requests_received",
            "RPCs received, by method, before gRPC's own queue and concurrency limit",
            ["method"],
            registry=self.registry,
        )
        # Unary calls only, and only those the server took on (see finished): a stream's
        # whole duration (minutes, hours) overflowed the 10 s bucket and made every
        # quantile of this histogram meaningless; refusals answered in microseconds in
        # bulk made the latency look better the more the server refused.
        self.latency = Histogram(
            "hashmatch_request_seconds",
            "Latency of unary RPCs the server took on, by method (refusals are in"
            " hashmatch_requests_total only)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # as go-grpc-prometheus and OpenTelemetry's rpc metrics do for streams: how long
        # they stay open (long buckets), and how many messages they carry
        self.stream_seconds = Histogram(
            "hashmatch_stream_seconds",
            "How long streaming RPCs the server took on stayed open, by method",
            ["method"],
            buckets=STREAM_BUCKETS,
            registry=self.registry,
        )
        self.stream_messages = Counter(
            "hashmatch_stream_messages",
            "Messages of streaming RPCs, by method and direction (received: the client's"
            " stream; sent: the server's)",
            ["method", "direction"],
            registry=self.registry,
        )
        self.stream_message_latency = Histogram(
            "hashmatch_stream_message_seconds",
            "Time from a MatchStream request message to its reply",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queries = Counter(
            "hashmatch_queries", "Hash queries looked up", ["signal_type"], registry=self.registry
        )
        # collected through _MatchesOfLiveLists: a deleted (or renamed) list's series go
        self.matches = Counter(
            "hashmatch_matches",
            "Matches reported, by hash list and signal type (a list whose rate jumps may"
            " have taken in a hash of a common benign image)",
            ["list", "signal_type"],
            registry=None,
        )
        self.registry.register(_MatchesOfLiveLists(self))
        self._list_names: Callable[[], set[str] | None] | None = None
        self.lookup_rows = Histogram(
            "hashmatch_lookup_rows",
            "Hashes per engine lookup call (concurrent requests merged by the batcher)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.inflight = Gauge("hashmatch_inflight_rpcs", "RPCs running", registry=self.registry)
        self.media_pending = Gauge(
            "hashmatch_media_pending", "Media items hashing or waiting", registry=self.registry
        )
        # rows, not signals: a vPDQ video has one per frame (counting videos would
        # scan the index on every scrape); Stats' details_json types.<type>.indexed
        self.index_signals = Gauge(
            "hashmatch_index_signals",
            "Rows in the live indexes: one per signal, one per frame of a vPDQ video",
            registry=self.registry,
        )
        self.index_state = _IndexState()
        self.registry.register(self.index_state)
        # Why: a RebuildIndex that failed, lost its snapshot, or took far longer than
        # the last one showed only in the server's log and the caller's stream
        self.rebuilds = Counter(
            "hashmatch_index_rebuilds",
            "Index rebuilds (RebuildIndex) ended, by outcome: ok, snapshot_failed (serving,"
            " no snapshot), stopped (the server stopping), failed (the old index serves)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in REBUILD_OUTCOMES:  # every series from the start: rate() sees the 1st
            self.rebuilds.labels(outcome)
        self.last_rebuild = _LastRebuild()
        self.registry.register(self.last_rebuild)
        # Why: the start-up load is the other index build (a snapshot and the changes
        # since, or the whole store when no snapshot is usable), the one that keeps a
        # restarted server NOT_SERVING; the rebuild metrics count RebuildIndex only, so
        # how long a restart takes showed only in the log. Apart from them: a load is
        # not a rebuild (nothing swapped, no snapshot written), and the last rebuild's
        # duration would otherwise jump between the two.
        self.index_load_seconds = Gauge(
            "hashmatch_index_load_seconds",
            "How long this server's start-up load of the index took (open, snapshot or build"
            " from the store, change replay, warm-up), by source: snapshot, or store (built"
            " from it); absent until loaded",
            ["source"],
            registry=self.registry,
        )
        self._http = None
        self._children: dict[tuple[str, str], Any] = {}
        self._duration_children: dict[tuple[str, bool], Any] = {}
        self._message_children: dict[tuple[str, str], Any] = {}
        self._query_children: dict[str, Any] = {}
        self._received_children: dict[str, Any] = {}
        self._match_children: dict[tuple[str, str], Any] = {}

    def finished(
        self, method: str, code: str, seconds: float, *, stream: bool = False, timed: bool = True
    ) -> None:
        """Count one finished RPC (label children cached: this runs on every call).

        ``stream``: its duration goes to ``hashmatch_stream_seconds``, not to the unary
        latency. ``timed`` False: a call refused before its handler did any work (no
        token, role, not serving, no slot) or for a full queue; it is counted, but
        kept out of the duration histograms, whose quantiles it would drag towards 0.
        """
        child = self._children.get((method, code))
        if child is None:
            child = self._children[(method, code)] = self.requests.labels(method, code)
        child.inc()
        if timed:
            duration = self._duration_children.get((method, stream))
            if duration is None:
                histogram = self.stream_seconds if stream else self.latency
                duration = self._duration_children[(method, stream)] = histogram.labels(method)
            duration.observe(seconds)
        self.inflight.dec()

    def stream_message(self, method: str, direction: str) -> Any:
        """The counter child of ``method``'s messages in ``direction`` (``received`` or
        ``sent``), for a streaming call to ``inc()`` per message."""
        child = self._message_children.get((method, direction))
        if child is None:
            child = self.stream_messages.labels(method, direction)
            self._message_children[(method, direction)] = child
        return child

    def arrived(self, method: str) -> None:
        """Count one call gRPC handed over (label child cached: this runs on every call)."""
        child = self._received_children.get(method)
        if child is None:
            child = self._received_children[method] = self.received.labels(method)
        child.inc()

    def count_queries(self, signal_type: str, n: int) -> None:
        """Count looked-up queries by type (label child cached: this runs on every call)."""
        child = self._query_children.get(signal_type)
        if child is None:
            child = self._query_children[signal_type] = self.queries.labels(signal_type)
        child.inc(n)

    def count_matches(self, results: Iterable[Any]) -> None:
        """Count the matches of a reply's QueryResults by (list, signal type).

        Why: a partner list that starts matching far more than it did is the first sign
        of a bad shared hash (a blank frame, a common meme) flooding reviewers, or of a
        wave of known content; per list is what an operator can act on. Few lists, so
        the label set stays small (the metrics port is the operator's, not a tenant's).
        """
        tally: dict[tuple[str, str], int] = {}  # a plain dict: Counter's cost was per call
        for result in results:
            for m in result.matches:
                key = (m.list_name, m.signal_type)
                tally[key] = tally.get(key, 0) + 1
        for key, n in tally.items():
            child = self._match_children.get(key)
            if child is None:
                child = self._match_children[key] = self.matches.labels(*key)
            child.inc(n)

    def track_lists(self, names: Callable[[], set[str] | None]) -> None:
        """``names()``: the hash lists that exist now (None: unknown, e.g. the index is
        still loading), read on every scrape to drop the match series of lists gone."""
        self._list_names = names

    def prune_matches(self) -> None:
        """Remove the ``hashmatch_matches_total`` series of lists that no longer exist.

        Why: a list deleted (``lists delete``, a mirror's purge) or renamed kept its
        series, at its last value, for the life of the process: stale series an
        operator's per-list alert or dashboard went on showing, and one more series
        per list ever matched. A list created again starts from 0 (a counter reset).
        """
        if self._list_names is None or not self._match_children:
            return
        seen = tuple(self._match_children)  # before the names: a list new since is kept
        names = self._list_names()
        if names is None:
            return
        for key in seen:
            if key[0] not in names:
                self._match_children.pop(key, None)
                with contextlib.suppress(KeyError):
                    self.matches.remove(*key)

    def rebuilt(self, seconds: float, outcome: str) -> None:
        """Record an index rebuild that ended ``outcome`` (:data:`REBUILD_OUTCOMES`)
        after ``seconds``."""
        self.rebuilds.labels(outcome).inc()
        self.last_rebuild.seconds, self.last_rebuild.ended_at = seconds, time.time()

    def loaded(self, seconds: float, source: str) -> None:
        """Record the start-up load of the index: ``seconds``, from ``source``."""
        self.index_load_seconds.labels(source).set(seconds)

    def track_index_size(self, count: Callable[[], float]) -> None:
        """Read the index size on every scrape (cheap engine call)."""
        self.index_signals.set_function(count)

    def serve(
        self,
        host: str,
        port: int,
        *,
        connections: int = METRICS_CONNECTIONS,
        client_timeout: float = METRICS_CLIENT_TIMEOUT,
    ) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (port 0 = any free).

        At most ``connections`` at once, each closed after ``client_timeout`` seconds
        (see :class:`_BoundedMetricsServer`)."""
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        handler = type("Handler", (_QuietHandler,), {"timeout": client_timeout})
        server_class = type(
            "MetricsServer",
            (_BoundedMetricsServer,),
            {"address_family": family, "limit": connections},
        )
        server = server_class(address[:2], handler)
        server.set_app(make_wsgi_app(self.registry))
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._http = server
        return server.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
