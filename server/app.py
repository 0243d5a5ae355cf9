"""Assemble and run the gRPC server: servicers, health, reflection, TLS, metrics, drain.

Start-up order: bind and start serving health (NOT_SERVING) at once, open the
engine (store + indexes) in the background, then flip health to SERVING. Calls
that need the index get UNAVAILABLE until then (clients retry those).
Shutdown order: health NOT_SERVING, refuse new calls, let in-flight calls finish
(up to ``drain_seconds``), wait for background work (a rebuild gives up at its next
step), then close the engine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hashmatch.engine.errors import HashmatchError
from hashmatch.server.auth import TokenAuth
from hashmatch.server.batcher import LookupBatcher
from hashmatch.server.calls import CallSlots, InFlight, log_refused
from hashmatch.server.certificates import pem_dates, utc
from hashmatch.server.config import UNIX_SCHEMES, ServerConfig
from hashmatch.server.decoding import interceptors
from hashmatch.server.errors import NotServing
from hashmatch.server.interrupts import wait_in_steps
from hashmatch.server.limits import MediaPool
from hashmatch.server.metrics import Metrics
from hashmatch.server.replies import WriteReplies
from hashmatch.server.service import AdminService, MatcherService, SignalsService
from hashmatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    matcher_pb2,
    matcher_pb2_grpc,
    signals_pb2,
    signals_pb2_grpc,
)

if TYPE_CHECKING:
    import numpy as np

    from hashmatch.engine.runtime import Engine

log = logging.getLogger("hashmatch.server")

STOP_SLACK_SECONDS = 5.0  # beyond the drain grace, how long stop() waits for gRPC
# gRPC threads and call slots beyond the configured ones: kept for health checks and
# reflection, so a busy server still answers its health probe rather than refusing it
# (an orchestrator would restart a server that is only busy).
RESERVED_WORKERS = 2
# Below this many open files a server is warned about: every client connection holds
# one, besides the store's and the indexes' files.
MIN_OPEN_FILES = 1024

SERVICE_NAMES = (
    matcher_pb2.DESCRIPTOR.services_by_name["Matcher"].full_name,
    signals_pb2.DESCRIPTOR.services_by_name["Signals"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit (RLIMIT_NOFILE) to its hard limit;
    the soft limit in effect after (-1: unlimited, or no such limit on this OS).

    Why: past the soft limit gRPC's listener stops accepting, logs "File descriptor
    limit reached. Retrying." every second, and new clients hang instead of getting an
    error. A soft limit is often far below the hard one (a soft 1024 is a common
    default), and a process may raise its own up to the hard one.
    Process-wide: a program that embeds the server gets the raised limit too.
    """
    try:
        import resource
    except ImportError:  # not POSIX: no such limit to raise
        return -1
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited soft limit is refused on Linux (fs.nr_open) and macOS (OPEN_MAX):
    # after the hard limit, try smaller ones the kernel takes.
    for target in (hard, 1 << 20, 1 << 16, 10240) if soft != unlimited else ():
        if target != unlimited and target <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        log.info("open-files limit raised from %s to %s", soft, target)
        soft = target
        break
    if soft != unlimited and soft < MIN_OPEN_FILES:
        log.warning(
            "the open-files limit is %s (hard limit %s): each client connection takes one, "
            "and past it new connections hang; raise the hard limit (ulimit -Hn, systemd "
            "LimitNOFILE=, docker --ulimit nofile=)",
            soft,
            hard,
        )
    return -1 if soft == unlimited else soft


def open_engine(config: ServerConfig) -> Engine:
    """The default engine: embedded SQLite store + sharded indexes in ``data_dir``."""
    from hashmatch.engine.runtime import Engine
    from hashmatch.server.store_lock_log import StoreLockLog

    shards = config.shards or None  # 0 = one per core
    # a store write (the open's own too) behind another process's lock is logged
    lock_log = StoreLockLog(Path(config.data_dir) / "store.sqlite")
    return Engine.open(
        config.data_dir,
        shards=shards,
        index_kind=config.index_kind,
        on_lock_wait=lock_log,
        on_lock_free=lock_log.lock_free,
    )


def check_tls_files(config: ServerConfig) -> None:
    """Raise OSError naming the TLS file that is wrong and how.

    Why: grpcio reports a certificate/key mismatch or a CA file holding no certificate
    only as a failed ``add_secure_port``, which read as "address in use".
    """
    _check_certificates("tls_cert", config.tls_cert)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            config.tls_cert, config.tls_key, password=_no_password
        )
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise OSError(
                f"tls_key {config.tls_key}: not the private key of tls_cert {config.tls_cert}"
            ) from None
        raise OSError(
            f"tls_key {config.tls_key}: not an unencrypted PEM private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise OSError(f"tls_key {config.tls_key}: {exc.strerror or exc}") from None
    if config.tls_client_ca:
        _check_certificates("tls_client_ca", config.tls_client_ca)


class ServerCertificates:
    """The TLS files as the server hands them out; :meth:`reload` re-reads them and the
    next connection's handshake uses them (gRPC asks :meth:`fetch` on every one).

    Why: a renewed certificate (certbot's deploy hook runs ``systemctl reload``) changed
    nothing until a restart: the server kept handing out the old one until it expired.
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        self.initial = self._read()
        self._pending: Any = None
        self._lock = threading.Lock()

    def _read(self) -> Any:
        cfg = self.config
        check_tls_files(cfg)
        key, cert = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
        client_ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=bool(self.config.tls_client_ca)
        )

    def reload(self) -> None:
        """Read the files again (checked as at start-up: OSError naming the file)."""
        fresh = self._read()
        with self._lock:
            self._pending = fresh

    def fetch(self) -> Any:
        """The configuration loaded since the last connection, or None (no change)."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def _check_certificates(key: str, path: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise OSError(
            f"{key} {path}: no PEM certificate in the file ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise OSError(f"{key} {path}: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    """An encrypted key fails (grpcio cannot use one) instead of prompting on the terminal."""
    return b""


#: What a certificate outside its validity period breaks (see certificate_warnings).
_CERTIFICATE_USERS = {
    "tls_cert": "clients will refuse to connect",
    "tls_client_ca": "the server will refuse every client certificate it signed",
}


def certificate_warnings(config: ServerConfig, now: float | None = None) -> list[str]:
    """``tls_cert`` and ``tls_client_ca`` (its first certificate) when outside their
    validity period.

    Why: every client refuses an expired server certificate (a renewal that did not
    happen) and only the client's debug log said why, while the server started without
    a word. A warning, not a refusal: a host whose clock is not yet set at boot would
    otherwise not start at all.
    """
    now = time.time() if now is None else now
    out = []
    for key, consequence in _CERTIFICATE_USERS.items():
        path = getattr(config, key)
        dates = pem_dates(path) if path else None
        if dates is None:
            continue
        not_before, not_after = dates
        if now > not_after:
            out.append(f"{key} {path} has expired ({utc(not_after)}): {consequence}")
        elif now < not_before:
            out.append(
                f"{key} {path} is not valid before {utc(not_before)} (is this host's clock"
                f" right?): {consequence}"
            )
    return out


def _is_loopback(host: str) -> bool:
    """``host`` (an address, ``[v6]`` or a name) is this machine's loopback interface."""
    host = host.strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_warnings(config: ServerConfig, auth: object | None) -> list[str]:
    """What an operator should hear at start-up about who can reach this server: no
    authentication at all (every caller an admin of every list), above all on an address
    other machines reach, tokens sent in plaintext off the loopback interface, and
    /metrics (no authentication; every list's name) off it."""
    # a unix socket is this machine's too (the clients' reading of a target: it was
    # warned of as "not a loopback address", tokens "in plaintext" off the machine)
    listen = config.listen
    loopback = listen.startswith(UNIX_SCHEMES) or _is_loopback(listen.rsplit(":", 1)[0])
    out = []
    if config.metrics_port >= 0 and not _is_loopback(config.metrics_host):
        out.append(
            f"/metrics on {config.metrics_host} is reachable from other machines without a"
            " token and names every hash list (hashmatch_matches_total{list}): let only the"
            " scraper reach it (firewall), or metrics_host = 127.0.0.1"
        )
    if auth is None:  # its only warning: serve no longer logs one of its own
        out.append(
            "NO AUTHENTICATION (--insecure-no-auth): every caller is an admin of every list"
            + ("" if loopback else f", and {config.listen} is reachable from other machines")
            + "; use it only on a machine you alone use"
        )
    elif not config.tls_cert and not loopback:
        out.append(
            f"tokens travel in plaintext: {config.listen} is not a loopback address and TLS"
            " is off (set tls_cert and tls_key)"
        )
    return out


class AuthGate(grpc.ServerInterceptor):
    """Refuse a call without a known token before its request is read.

    Why: grpcio receives (up to 2 x max_message_bytes) and decodes a unary request
    before any handler runs, so the skin's UNAUTHENTICATED came after the server had
    spent ~2x the message size in memory on a caller with no token. A request-streaming
    handler that aborts at once never reads the message. The skin (calls.rpc) still
    authenticates every call; this only answers the unknown ones early.

    It also counts every hashmatch call as it arrives (``hashmatch_requests_received``):
    gRPC runs interceptors before its ``max_concurrent_rpcs`` check and its thread
    queue, whose refusals and drops no handler sees.
    """

    def __init__(self, host: ServiceHost):
        self.host = host

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith("/hashmatch.v1."):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        metrics = self.host.metrics
        metrics.arrived(method)  # known methods only: a bounded label
        auth = self.host.auth
        if auth is None:
            return handler
        arrived = time.perf_counter()
        try:
            auth.authenticate(details.invocation_metadata)
        except HashmatchError as exc:
            message = str(exc)

            def refuse(_requests, context):
                # counted, not timed: a refusal's microseconds dragged the latency
                # quantiles down (logged as 0 ms before; now the wait for a thread)
                seconds = time.perf_counter() - arrived
                metrics.inflight.inc()
                metrics.finished(method, "UNAUTHENTICATED", seconds, timed=False)
                log_refused(method, context.peer(), message, seconds)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            if handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(refuse)
            return grpc.stream_unary_rpc_method_handler(refuse)
        return handler


class TokenlessStreams(grpc.ServerInterceptor):
    """At most ``limit`` open reflection streams; beyond, RESOURCE_EXHAUSTED at once.

    Why: reflection answers without a token, and its bidirectional stream holds a worker
    thread for as long as the client keeps it open, sending nothing. ``workers`` + 2 idle
    reflection streams from a caller with no token left no thread for any other call
    (every tenant's calls hung to their deadline). Health's Watch holds no thread.
    """

    def __init__(self, limit: int):
        self.slots = CallSlots(limit, kind="reflection streams")

    @classmethod
    def for_config(cls, config: ServerConfig) -> TokenlessStreams:
        """Half as many as the request streams (MatchStream, Ingest) may hold, a quarter
        of the workers: a tool's overlapping look-ups fit, and threads are left for
        unary calls even when both kinds of stream are all held open."""
        return cls(max(1, config.request_streams_limit // 2))

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{reflection.SERVICE_NAME}/"):
            return handler
        inner, slots = handler.stream_stream, self.slots

        def capped(requests, context):
            try:
                slots.take()
            except HashmatchError as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            try:
                yield from inner(requests, context)
            finally:
                slots.give_back()

        return grpc.stream_stream_rpc_method_handler(
            capped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ServiceHost:
    """State every servicer shares; owns the engine once it is open."""

    def __init__(
        self,
        config: ServerConfig,
        auth: TokenAuth | None,
        engine_factory: Callable[[ServerConfig], Any] = open_engine,
    ):
        self.config = config
        self.auth = auth
        self.metrics = Metrics()
        self.slots = CallSlots(config.request_streams_limit)
        self.inflight = InFlight()  # handlers running: stop() waits for them
        self.replies = WriteReplies()  # of writes by request_id: a retry gets the first's
        self.media = MediaPool(
            config.media_workers, config.media_queue, on_change=self.metrics.media_pending.set
        )
        self.batcher = (
            LookupBatcher(
                self._run_lookup,
                threads=config.lookup_threads,
                max_batch=config.lookup_batch,
                max_pending=config.max_pending_lookups,
            )
            if config.lookup_threads > 0
            else None
        )
        self.engine: Any = None
        self.load_error: BaseException | None = None
        self.stopping = False
        self._engine_factory = engine_factory
        self._background: set[threading.Thread] = set()  # work stop() waits for
        self._background_lock = threading.Lock()

    def load(self) -> None:
        started = time.perf_counter()
        engine = self._engine_factory(self.config)
        self._log_skipped_snapshots(engine)
        self._warm_up(engine)
        self.engine = engine
        info = getattr(engine, "load_info", None) or {}
        seconds = time.perf_counter() - started
        self.metrics.loaded(seconds, info.get("source") or "unknown")
        log.info(
            "index loaded and warmed up in %.2f s (from %s%s, %s change(s) replayed)",
            seconds,
            info.get("source", "?"),
            f" {info['snapshot']}" if info.get("snapshot") else "",
            info.get("replayed_changes", 0),
        )

    @staticmethod
    def _log_skipped_snapshots(engine: Engine) -> None:
        """A snapshot the load refused (damaged, stale, another store's) means a slow
        build from the store, and maybe a data dir mix-up: say so in the log."""
        info = getattr(engine, "load_info", None) or {}
        for skipped in info.get("skipped_snapshots", []):
            log.warning("index snapshot skipped: %s", skipped)
        if info.get("skipped_snapshots") and info.get("source") == "store":
            log.warning("no usable index snapshot: the index was built from the store")

    @staticmethod
    def _warm_up(engine: Engine) -> None:
        """Before SERVING, so the first real caller does not pay for lazy set-up: the
        index kernels and lookups, then the hashing kernels (``python -m
        hashmatch.server.warm`` runs both at install, to fill numba's cache)."""
        ServiceHost._warm_up_indexes(engine)
        ServiceHost._warm_up_hashing()

    @staticmethod
    def _warm_up_indexes(engine: Engine) -> None:
        """One throw-away lookup per type (JIT-compiled kernels, page faults of mapped
        indexes); the kernels also run on a throw-away index (``warm_index_kernels``)."""
        import numpy as np

        from hashmatch.engine import signal_types
        from hashmatch.engine.store_index import warm_index_kernels

        for st in signal_types.all_types():
            try:  # an empty live index runs no kernel: a throw-away one does
                kind, shards = (
                    getattr(engine, "index_kind", "auto"),
                    getattr(engine, "shards", None),
                )
                warm_index_kernels(st, kind=kind, shards=shards)
                if st.name != "vpdq":
                    engine.match(st.name, np.zeros((1, st.nbytes), np.uint8), threshold=0)
            except Exception as exc:  # warm-up is best effort; real calls report errors
                log.warning("warm-up lookup for %s failed: %s", st.name, exc)

    @staticmethod
    def _warm_up_hashing() -> None:
        """Hash small generated images with each photo type (JIT-compiled kernels).

        Why these images: a 64x64 one takes PDQ's own 64x64 path, so it alone left the
        general downsampling kernels, which every real photo needs, to the first caller
        (4-10 s with a cold numba cache); a size seen a second time runs the Lanczos
        kernels of ``engine.resample`` (the first time goes to Pillow).
        """
        import io

        import numpy as np
        from PIL import Image

        from hashmatch.engine import signal_types
        from hashmatch.engine.hashing import hash_media

        images = []
        for h, w in ((64, 64), (72, 96), (72, 96)):
            ramp = np.add.outer(np.arange(h), np.arange(w)).astype(np.uint8) * 2
            buf = io.BytesIO()
            Image.fromarray(np.dstack([ramp, ramp[::-1], 255 - ramp])).save(buf, "PNG")
            images.append(buf.getvalue())
        for st in signal_types.all_types():
            if st.content != "photo":
                continue
            try:
                for image in images:
                    hash_media(image, [st.name])
            except Exception as exc:  # e.g. a type whose hasher is not there yet
                log.info("warm-up hashing for %s skipped: %s", st.name, exc)

    def run_background(self, name: str, target: Callable[[], None]) -> None:
        """Run ``target`` on its own thread, which :meth:`HashmatchServer.stop` waits for
        before closing the engine (work that outlives its call, e.g. a rebuild: closing
        the store under it would fail it with "closed database" errors).

        ``target`` should watch :attr:`stopping` and give up promptly. Refused with
        NotServing once the server is stopping (the wait may already have started).
        """

        def run() -> None:
            try:
                target()
            finally:
                # a new thread per call (RebuildIndex): its store connection must not
                # outlive it (one leaked connection, fds and page cache, per rebuild)
                engine = self.engine
                if engine is not None:
                    with contextlib.suppress(Exception):
                        engine.store.release_thread_conn()

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._background_lock:
            if self.stopping:
                raise NotServing("the server is shutting down")
            self._background = {t for t in self._background if t.is_alive()}
            self._background.add(thread)
            thread.start()

    def wait_background(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for background work; True when none is left."""
        deadline = time.monotonic() + timeout
        with self._background_lock:
            threads = list(self._background)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def check_serving(self, method: str) -> None:
        if self.stopping:
            raise NotServing("the server is shutting down")
        if self.engine is None:
            if self.load_error is not None:
                raise NotServing(f"the index failed to load: {self.load_error}")
            raise NotServing("the index is still loading; retry shortly")

    # -- helpers the servicers share -------------------------------------------------

    def lookup(
        self,
        signal_type: str,
        codes: np.ndarray,
        *,
        tenant: str | None,
        threshold: int | None,
        lists: list[str] | None,
        max_results: int | None,
        qualities: list[int | None] | None,
        min_quality: int | None,
        timeout: Callable[[], float | None],
        low_quality_queries: str | None = None,
        share: str | None = None,
    ) -> list:
        """One result list per row of ``codes`` (batched with concurrent callers);
        ``share``: whose share of the lookup queue the rows take (``Call.share``)."""
        key = (
            signal_type, tenant, threshold, tuple(lists or ()), max_results, min_quality,
            low_quality_queries,
        )  # fmt: skip
        if self.batcher is None:
            return self._run_lookup(key, codes, qualities)
        return self.batcher.lookup(key, codes, qualities, timeout=timeout, share=share)

    def _run_lookup(
        self, key: tuple, codes: np.ndarray, qualities: list[int | None] | None
    ) -> list:
        signal_type, tenant, threshold, lists, max_results, min_quality, low_quality = key
        self.metrics.lookup_rows.observe(len(codes))
        return self.engine.match(
            signal_type,
            codes,
            tenant=tenant,
            threshold=threshold,
            lists=list(lists) or None,
            max_results=max_results,
            qualities=qualities,
            min_quality=min_quality,
            low_quality_queries=low_quality,
        )

    def engine_lists(self, tenant: str | None) -> list[signals_pb2.HashList]:
        from hashmatch.server import ingest

        return ingest.list_hash_lists(self.engine, tenant)

    def stats_pb(self) -> admin_pb2.StatsResponse:
        from hashmatch.server import stats

        return stats.stats_pb(self.engine.stats())

    def list_names(self) -> set[str] | None:
        """The hash lists in the store now (None before the index is loaded), for the
        metrics to drop the series of deleted lists. Read on a scrape's own short-lived
        thread: its store connection is closed at once."""
        engine = self.engine
        if engine is None:
            return None
        try:
            return {name for name, _enabled in engine.store.list_table().values()}
        finally:
            engine.store.release_thread_conn()

    def index_sizes(self) -> dict[str, int]:
        """Index rows per signal type ({} before the index is loaded)."""
        engine = self.engine
        return {} if engine is None else engine.index_sizes()

    def snapshot_at(self) -> float | None:
        engine = self.engine
        return None if engine is None else getattr(engine, "snapshot_at", None)

    def index_size(self) -> float:
        """Signals in the live indexes, for the metrics gauge (read on every scrape).

        ``engine.stats()`` counts rows in SQLite (seconds at 10M); the index lengths
        are O(1).
        """
        try:
            return float(sum(self.engine.index_sizes().values()))
        except Exception:  # a scrape must never fail
            return float("nan")


def client_ping_policy(min_seconds: float) -> list[tuple[str, int]]:
    """Accept clients' keepalive pings every ``min_seconds``, during calls or between.

    Why: gRPC's default lets a client ping only every 5 minutes while no data flows and
    closes the connection after 2 pings sooner ("too many pings", ENHANCE_YOUR_CALM),
    killing a healthy idle ``match_stream`` of a client that pings to find dead
    connections (the Python clients do, every 30 s).
    """
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: its name is this one (a
        # "grpc.http2.min_recv_ping_interval_without_data_ms" is silently ignored)
        ("grpc.http2.min_ping_interval_without_data_ms", max(1, int(min_seconds * 1000))),
    ]


def server_pings(every_seconds: float, timeout_seconds: float) -> list[tuple[str, int]]:
    """Ping each connection every ``every_seconds`` (0: never) and close it when a ping
    is not answered within ``timeout_seconds``.

    Why: a client that vanished without a word keeps its calls open on the server (gRPC's
    default server ping is every 2 hours): an open MatchStream or Ingest holds one of the
    few request-stream slots (half the workers, half of those per tenant), so a pipeline
    host lost behind a NAT could leave its tenant refused RESOURCE_EXHAUSTED for hours.
    """
    if every_seconds <= 0:
        return []
    return [
        ("grpc.keepalive_time_ms", max(1, int(every_seconds * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, int(timeout_seconds * 1000))),
        # the timeout gRPC applies to a ping in flight (60 s by default), whichever asked
        ("grpc.http2.ping_timeout_ms", max(1, int(timeout_seconds * 1000))),
        # gRPC sends at most 2 pings between data frames by default: an idle stream's
        # connection would be checked twice, then never again
        ("grpc.http2.max_pings_without_data", 0),
    ]


class HashmatchServer:
    """A running hashmatch gRPC server (``start`` / ``wait_ready`` / ``stop``)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        auth: TokenAuth | None,
        engine_factory: Callable[[ServerConfig], Any] = open_engine,
        extra_interceptors: Sequence[grpc.ServerInterceptor] = (),
    ):
        """``extra_interceptors``: outermost, around every call (for tests that act on a
        call as the network would, e.g. lose a reply after the servicer ran)."""
        if auth is None and not config.insecure_no_auth:
            raise ValueError("no auth configured: pass tokens or set insecure_no_auth explicitly")
        self.config = config
        self.host = ServiceHost(config, auth, engine_factory)
        self.health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=ThreadPoolExecutor(max_workers=1),
        )
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.certificates: ServerCertificates | None = None  # with TLS
        self._ready = threading.Event()
        self._server: grpc.Server | None = None
        self._extra_interceptors = list(extra_interceptors)

    def _build(self) -> grpc.Server:
        cfg = self.config
        hard_limit = cfg.max_message_bytes * 2 + 1024 * 1024  # beyond: gRPC's own refusal
        server = grpc.server(
            ThreadPoolExecutor(
                max_workers=cfg.workers + RESERVED_WORKERS, thread_name_prefix="rpc"
            ),
            interceptors=[
                *self._extra_interceptors,
                AuthGate(self.host),
                TokenlessStreams.for_config(cfg),
                *interceptors(),
            ],
            # A bounded queue: calls beyond it are refused. Request streams, which can hold
            # a thread while idle, get at most half the threads (calls.CallSlots).
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs + RESERVED_WORKERS,
            options=[
                ("grpc.max_receive_message_length", hard_limit),
                ("grpc.max_send_message_length", hard_limit),
                ("grpc.so_reuseport", 0),
                *client_ping_policy(cfg.min_client_ping_seconds),
                *server_pings(cfg.keepalive_seconds, cfg.keepalive_timeout_seconds),
            ],
        )
        matcher_pb2_grpc.add_MatcherServicer_to_server(MatcherService(self.host), server)
        signals_pb2_grpc.add_SignalsServicer_to_server(SignalsService(self.host), server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self.host), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if cfg.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        return server

    def _bind(self, server: grpc.Server) -> int:
        cfg = self.config
        if cfg.tls_cert:
            self.certificates = ServerCertificates(cfg)
            creds = self.certificates.credentials()
            add = lambda: server.add_secure_port(cfg.listen, creds)  # noqa: E731
        else:
            add = lambda: server.add_insecure_port(cfg.listen)  # noqa: E731
        try:
            port = add()
        except RuntimeError:  # grpcio raises instead of returning 0 (e.g. port in use)
            port = 0
        if not port:
            from hashmatch.server.listen_refusal import listen_refusal

            raise OSError(
                f"cannot listen on {cfg.listen}: {listen_refusal(cfg.listen)}; pick another"
                " with --listen"
            )
        return port

    def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def start(self, *, load_in_background: bool = True) -> HashmatchServer:
        raise_open_files_limit()
        self._server = self._build()
        self.port = self._bind(self._server)
        self._set_health(False)
        self._server.start()
        if self.config.metrics_port >= 0:
            try:
                self.metrics_port = self.host.metrics.serve(
                    self.config.metrics_host, self.config.metrics_port
                )
            except OSError as exc:
                self._server.stop(None)
                raise OSError(
                    f"metrics on {self.config.metrics_host}:{self.config.metrics_port}: "
                    f"{exc.strerror or exc}; pick another with --metrics-port (-1 = off)"
                ) from exc
        self.host.metrics.track_index_size(self.host.index_size)
        self.host.metrics.track_lists(self.host.list_names)
        self.host.metrics.index_state.sizes = self.host.index_sizes
        self.host.metrics.index_state.snapshot_at = self.host.snapshot_at
        unix = self.config.listen.startswith(UNIX_SCHEMES)  # gRPC's "port" of a socket is 1
        log.info(
            "hashmatch listening on %s%s%s%s",
            self.config.listen,
            "" if unix else f" (port {self.port})",
            ", TLS" if self.config.tls_cert else "",
            ", mutual TLS" if self.config.tls_client_ca else "",
        )
        for warning in (
            *exposure_warnings(self.config, self.host.auth),
            *certificate_warnings(self.config),
        ):
            log.warning("%s", warning)
        if load_in_background:
            threading.Thread(target=self._load, name="index-load", daemon=True).start()
        else:
            self._load()
        return self

    def _load(self) -> None:
        try:
            self.host.load()
        except BaseException as exc:
            self.host.load_error = exc
            if isinstance(exc, HashmatchError | OSError | sqlite3.Error):  # the data dir's
                log.error("the index failed to load: %s: %s", type(exc).__name__, exc)
            else:  # a bug: keep the traceback
                log.exception("the index failed to load; the server stays NOT_SERVING")
            return
        if self.host.stopping:  # stopped while loading: nobody will close it later
            if hasattr(self.host.engine, "close"):
                self.host.engine.close()
            return
        self._set_health(True)
        self._ready.set()

    def reload_certificates(self) -> bool:
        """Re-read the TLS files (SIGHUP): new connections get them; False without TLS
        or before the port is bound (start-up reads them then). OSError naming the file
        if one is unusable; the certificate being served is kept then."""
        if self.certificates is None:
            return False
        self.certificates.reload()
        for warning in certificate_warnings(self.config):
            log.warning("%s", warning)
        return True

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new calls, let in-flight ones finish, then close the engine."""
        if self._server is None:
            return
        self.host.stopping = True
        self._set_health(False)
        grace = self.config.drain_seconds if grace is None else grace
        # Bounded: grpcio can leave a call that never completes (seen with undecodable
        # stream messages before decoding.py), and a stop that never returns keeps the
        # process alive after SIGTERM until it is killed.
        stopped = self._server.stop(grace)
        if not wait_in_steps(stopped.wait, grace + STOP_SLACK_SECONDS):
            log.warning(
                "gRPC server did not finish stopping within %.1f s; closing anyway",
                grace + STOP_SLACK_SECONDS,
            )
        self.host.media.shutdown()
        if self.host.batcher is not None:
            self.host.batcher.close()
        # a rebuild outlives its call; it saw `stopping` and gives up at its next step.
        # Handlers of cancelled calls may still be running too (grpcio does not wait
        # for them): an Ingest between two messages, a lookup finishing its batch.
        if not wait_in_steps(self.host.wait_background, STOP_SLACK_SECONDS):
            log.warning(
                "a rebuild did not stop within %.1f s; the engine is left open for it "
                "(process exit ends it)",
                STOP_SLACK_SECONDS,
            )
        elif not wait_in_steps(self.host.inflight.wait_idle, STOP_SLACK_SECONDS):
            log.warning(
                "calls were still running %.1f s after the drain; the engine is left open "
                "for them (process exit ends them)",
                STOP_SLACK_SECONDS,
            )
        elif self.host.engine is not None and hasattr(self.host.engine, "close"):
            self.host.engine.close()
        self.host.metrics.stop()
        self._server = None
        log.info("hashmatch stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout) if self._server else True
