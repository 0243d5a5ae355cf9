"""A typed Python client for the hashmatch gRPC service.

Why: upload pipelines and the ``hashmatch remote`` verbs should not hand-build
protobufs or re-implement retries. Unary calls (and ingest, and the start of
``changes``) are retried on UNAVAILABLE (server starting, index loading, restarting,
draining) with exponential backoff (``backoff`` doubling, at most 2 s, jittered): until
the call's deadline when it has one (the client's ``timeout`` by default), else up to
``retries`` times; ``retries=0`` never retries. Every other status is raised at once as
:class:`grpc.RpcError` (use :func:`hashmatch.server.errors.bad_request_fields` to read
the field details). Streams (``match_stream``, ``rebuild``) are not retried.

    with HashmatchClient("127.0.0.1:50051", token=os.environ["HASHMATCH_TOKEN"]) as c:
        reply = c.match([("pdq", "f8f8...")], threshold=31)
"""

from __future__ import annotations

import itertools
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashmatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    matcher_pb2,
    matcher_pb2_grpc,
    signals_pb2,
    signals_pb2_grpc,
)

HashInput = common_pb2.HashValue | tuple[str, str | bytes]
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
MAX_BACKOFF = 2.0  # seconds between retries at most
MIN_ATTEMPT_SECONDS = 0.05  # a retry is only worth making with this much time left
MAX_NOT_FOUND_LISTED = 1000  # RetractResponse.not_found lists this many (the server uses it)


def _read(value: str | Path | bytes | None) -> bytes | None:
    """PEM bytes from bytes, PEM text, or a file path.

    Why: a certificate read with ``open(...).read()`` (or from a secret store) is a str;
    taken as a path it failed with the whole certificate as the file name.
    """
    if value is None or isinstance(value, bytes):
        return value
    # PEM text may start with OpenSSL's "Bag Attributes" lines (a friendlyName can be
    # any UTF-8); no file path holds a PEM armour line
    if isinstance(value, str) and "-----BEGIN " in value:
        return value.encode("utf-8")
    return Path(value).read_bytes()


_LOW_QUALITY_ENUM = {
    None: matcher_pb2.LOW_QUALITY_QUERIES_UNSPECIFIED,
    "match_quality_stored": matcher_pb2.LOW_QUALITY_QUERIES_MATCH_QUALITY_STORED,
    "skip": matcher_pb2.LOW_QUALITY_QUERIES_SKIP,
}


def low_quality_enum(rule: str | None) -> int:
    """``"match_quality_stored"`` / ``"skip"`` / None -> MatchOptions.low_quality_queries."""
    if rule not in _LOW_QUALITY_ENUM:
        names = " or ".join(k for k in _LOW_QUALITY_ENUM if k)
        raise ValueError(f"low_quality_queries must be {names}, got {rule!r}")
    return _LOW_QUALITY_ENUM[rule]


def hash_value(item: HashInput) -> common_pb2.HashValue:
    """``("pdq", "hex...")``, ``("pdq", raw_bytes)`` or a HashValue -> HashValue."""
    if isinstance(item, common_pb2.HashValue):
        return item
    signal_type, value = item
    if isinstance(value, bytes | bytearray):
        return common_pb2.HashValue(signal_type=signal_type, raw=bytes(value))
    return common_pb2.HashValue(signal_type=signal_type, hex=value)


def signal(
    signal_type: str,
    value: str | bytes,
    *,
    labels: Sequence[str] = (),
    external_id: str = "",
    quality: int | None = None,
    expires_at: float | str | datetime | None = None,
) -> signals_pb2.Signal:
    """One signal to ingest. Each states the whole signal: a re-send without the
    ``quality`` or ``expires_at`` a partner gave clears them in the store.
    ``expires_at``: epoch seconds, an ISO-8601 string (as in a CSV) or a datetime."""
    pb = signals_pb2.Signal(
        hash=hash_value((signal_type, value)), labels=list(labels), external_id=external_id
    )
    if quality is not None:
        pb.hash.quality = quality
    if expires_at is not None:
        pb.expires_at = _epoch_seconds(expires_at)
    return pb


def _epoch_seconds(value: float | str | datetime) -> float:
    """``expires_at`` as the wire's epoch seconds: the file parsers' rule for strings
    (ISO-8601, UTC unless it says otherwise), so a client and a CSV agree."""
    from hashmatch.engine.ingest import parse_time

    if isinstance(value, int | float):
        return float(value)  # checked by the server (a NaN or milliseconds is refused)
    if isinstance(value, datetime):
        value = value.isoformat()
    seconds = parse_time(value)
    if seconds is None:
        raise ValueError("expires_at is empty: leave it out for no expiry")
    return seconds


def video_signal(
    frames: Sequence[str],
    *,
    qualities: Sequence[int] = (),
    timestamps: Sequence[float] = (),
    labels: Sequence[str] = (),
    external_id: str = "",
    expires_at: float | str | datetime | None = None,
) -> signals_pb2.Signal:
    """A vPDQ signal: one video given as its frames' PDQ hex."""
    pb = signals_pb2.Signal(
        hash=common_pb2.HashValue(signal_type="vpdq"),
        frames=list(frames),
        frame_qualities=list(qualities),
        timestamps=list(timestamps),
        labels=list(labels),
        external_id=external_id,
    )
    if expires_at is not None:
        pb.expires_at = _epoch_seconds(expires_at)
    return pb


def _clean_token(token: str | None) -> str | None:
    """The token without surrounding whitespace, checked to be sendable as metadata.

    Why: a token read from a file or a secret store often ends in a newline, and
    grpcio turns a metadata value it cannot send into an opaque INTERNAL error.
    """
    if token is None:
        return None
    token = token.strip()
    if any(not " " < c < "\x7f" for c in token):
        raise ValueError("token: only printable ASCII without spaces can be sent")
    return token


def tls_hint(details: str) -> str:
    """A hint for errors that are a TLS mismatch, not a server that is down: gRPC words
    them as UNAVAILABLE ("Socket closed", a failed handshake), which reads like one.
    Empty for anything else."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            " (the server's certificate is not signed by a CA this client trusts: give its"
            " CA with --ca)"
        )
    if "Socket closed" in details or "andshake" in details or "WRONG_VERSION" in details:
        return (
            " (a TLS mismatch? a TLS server needs --tls [--ca CA.pem], mutual TLS also"
            " --cert and --key; a plain server, no --tls)"
        )
    return ""


class HashmatchClient:
    """Connects to one hashmatch server. Thread-safe (one channel, many calls).

    ``root_certificates``, ``client_cert``, ``client_key``: PEM bytes, PEM text (a str
    starting ``-----BEGIN``) or a file path. ``timeout``: seconds per call (None = no
    deadline); ``retries``: how often a call without a deadline retries UNAVAILABLE.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: str | Path | bytes | None = None,
        client_cert: str | Path | bytes | None = None,
        client_key: str | Path | bytes | None = None,
        server_name: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_message_bytes: int = 64 * 1024 * 1024,
    ):
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if bool(client_cert) != bool(client_key):
            # grpcio aborts the whole process (a failed C++ CHECK, SIGABRT) on a client
            # certificate without its key; a key alone would silently be ignored
            raise ValueError("client_cert and client_key go together (mutual TLS): give both")
        token = _clean_token(token)
        if tls or root_certificates or client_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(root_certificates),
                private_key=_read(client_key),
                certificate_chain=_read(client_cert),
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.matcher = matcher_pb2_grpc.MatcherStub(self.channel)
        self.signals = signals_pb2_grpc.SignalsStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    # -- plumbing ---------------------------------------------------------------------

    def _unary(
        self,
        method: Callable,
        request: Any,
        timeout: float | None,
        *,
        retry_window: float | None = None,
    ) -> Any:
        """``method(request)``, retried on UNAVAILABLE (see :meth:`_retry_pause`).

        ``retry_window``: retry for at most this long after the first failure, even when
        the deadline is later (an ingest's deadline grows with its size; a dead server
        should not be retried for hours)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        retry_until = deadline
        delay = self.backoff
        for attempt in itertools.count():
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                return method(request, timeout=left, metadata=self.metadata)
            except grpc.RpcError as exc:
                if attempt == 0 and deadline is not None and retry_window is not None:
                    retry_until = min(deadline, time.monotonic() + retry_window)
                pause = self._retry_pause(exc, attempt, retry_until, delay)
                if pause is None:
                    raise
                time.sleep(pause)
                delay = min(delay * 2, MAX_BACKOFF)
        raise AssertionError("unreachable")

    def _retry_pause(
        self, exc: grpc.RpcError, attempt: int, deadline: float | None, delay: float
    ) -> float | None:
        """Seconds to wait before retrying ``exc``, or None to raise it.

        Why: a server restart or an index load (millions of signals) is UNAVAILABLE for
        seconds, longer than a fixed few retries last; a call with a deadline rides it
        out until the deadline (the caller said how long it can wait), one without keeps
        to ``retries`` attempts so it cannot hang. ``retries=0`` never retries. The
        pause is jittered so clients restarted together do not retry in lockstep.
        """
        if exc.code() not in RETRYABLE or self.retries <= 0:
            return None
        pause = delay * (1 + random.uniform(0, 0.1))
        if deadline is None:
            return pause if attempt < self.retries else None
        # leave the last attempt time to get an answer: else it ends DEADLINE_EXCEEDED
        # and hides that the server was unavailable throughout
        pause = min(pause, deadline - time.monotonic() - MIN_ATTEMPT_SECONDS)
        return pause if pause > 0 else None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> HashmatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Matcher ----------------------------------------------------------------------

    @staticmethod
    def match_request(
        hashes: Iterable[HashInput] = (),
        *,
        media: Sequence[bytes] = (),
        media_types: Sequence[str] = (),
        threshold: int | None = None,
        lists: Sequence[str] = (),
        max_results: int = 0,
        dihedral: bool = False,
        trim_borders: bool = False,
        all_frames: bool = False,
        uncrop: bool = False,
        derotate: bool = False,
        upscale_small: bool = False,
        upscale_small_replicate: bool = False,
        min_quality: int | None = None,
        low_quality_queries: str | None = None,
        request_id: str = "",
        videos: Sequence[Sequence[str] | matcher_pb2.VideoQuery] = (),
    ) -> matcher_pb2.MatchRequest:
        """``videos``: vPDQ queries, each a list of frame hex (or a VideoQuery).
        ``low_quality_queries``: ``"match_quality_stored"`` or ``"skip"`` (None = the
        server's default, match_quality_stored)."""
        options = matcher_pb2.MatchOptions(
            lists=list(lists),
            max_results=max_results,
            dihedral=dihedral,
            trim_borders=trim_borders,
            all_frames=all_frames,
            uncrop=uncrop,
            derotate=derotate,
            upscale_small=upscale_small,
            upscale_small_replicate=upscale_small_replicate,
            low_quality_queries=low_quality_enum(low_quality_queries),
        )
        if threshold is not None:
            options.threshold = threshold
        if min_quality is not None:
            options.min_quality = min_quality
        return matcher_pb2.MatchRequest(
            hashes=[hash_value(h) for h in hashes],
            media=list(media),
            media_types=list(media_types),
            options=options,
            request_id=request_id,
            videos=[
                v
                if isinstance(v, matcher_pb2.VideoQuery)
                else matcher_pb2.VideoQuery(signal_type="vpdq", frames=list(v))
                for v in videos
            ],
        )

    def match(
        self, hashes: Iterable[HashInput] = (), *, timeout: float | None = None, **options: Any
    ) -> matcher_pb2.MatchResponse:
        """Look hashes and/or media up; options as :meth:`match_request`."""
        return self._unary(self.matcher.Match, self.match_request(hashes, **options), timeout)

    def match_stream(
        self, requests: Iterable[matcher_pb2.MatchRequest], *, timeout: float | None = None
    ) -> Iterator[matcher_pb2.MatchResponse]:
        """Bidirectional stream: one response per request, in order (not retried)."""
        return self.matcher.MatchStream(iter(requests), timeout=timeout, metadata=self.metadata)

    def hash(
        self,
        media: Sequence[bytes],
        signal_types: Sequence[str] = ("pdq",),
        *,
        dihedral: bool = False,
        trim_borders: bool = False,
        timeout: float | None = None,
    ) -> matcher_pb2.HashResponse:
        request = matcher_pb2.HashRequest(
            media=list(media),
            signal_types=list(signal_types),
            dihedral=dihedral,
            trim_borders=trim_borders,
        )
        return self._unary(self.matcher.Hash, request, timeout)

    # -- Signals ----------------------------------------------------------------------

    def ingest(
        self,
        list_name: str,
        signals: Iterable[signals_pb2.Signal] | Callable[[], Iterable[signals_pb2.Signal]],
        *,
        source: str = "",
        strict: bool = False,
        batch_size: int = 1000,
        timeout: float | None = None,
        total: int | None = None,
    ) -> signals_pb2.IngestResponse:
        """Stream ``signals`` into ``list_name``, ``batch_size`` signals a message.

        ``signals``: an iterable, read whole first (a retry sends it again), or a
        callable that returns a fresh iterable of the same signals each time it is
        called: then nothing is held in memory (a file of 10M signals streams in
        constant memory) and a retry calls it again. ``total``: with a callable, how
        many signals it yields (an upper bound will do): the default deadline and
        ``signals_total`` come from it; without it the stream has no deadline unless
        ``timeout`` is given.

        Ingest is an upsert, so re-sending from the first signal is always safe (what
        was stored already counts as ``unchanged``): that is how a call that meets
        UNAVAILABLE is retried, for up to the client's timeout of unavailability.

        ``timeout`` bounds the whole stream; by default it is the client's timeout per
        message (batch), not for all of them: a large file takes longer than 30 s to
        send while the server stores each message as it arrives.

        ``strict`` applies per message, not per call: the server refuses a message
        (``batch_size`` signals) holding a bad item, and the call fails, but the messages
        before it are stored. For all or nothing, send one message (``batch_size`` at
        least the number of signals, within the server's ``max_batch``).

        A failed call's ``RpcError`` gets ``signals_total`` and ``signals_sent``: the
        most signals any attempt handed to gRPC, an upper bound on what was stored (the
        reply acknowledges nothing per message, so a cut-off stream may have stored
        less: to finish the job, re-send from the first signal).
        """
        if callable(signals):
            fresh = signals
        else:
            # Buffered: a retried call re-sends from the first signal (nothing says how
            # far a cut-off stream was stored), and the default deadline scales with the
            # number of messages (and signals_total counts them).
            items = list(signals)
            total = len(items)

            def fresh() -> Iterable[signals_pb2.Signal]:
                return items

        batch_size = max(1, batch_size)
        unbounded = timeout is None and total is None  # a stream of unknown length
        if timeout is None and self.timeout is not None and total is not None:
            timeout = self.timeout * max(1, -(-total // batch_size))
        most_sent = [0]  # across attempts: a retry that fails early must not lower it
        expiries = [False]  # any signal sent with expires_at (an older server drops them)

        def message(chunk: list[signals_pb2.Signal]) -> signals_pb2.IngestRequest:
            return signals_pb2.IngestRequest(
                list_name=list_name, signals=chunk, source=source, strict=strict
            )

        def batches() -> Iterator[signals_pb2.IngestRequest]:
            sent = 0
            chunk: list[signals_pb2.Signal] = []
            for item in fresh():
                chunk.append(item)
                expiries[0] = expiries[0] or item.HasField("expires_at")
                if len(chunk) == batch_size:
                    sent += len(chunk)
                    most_sent[0] = max(most_sent[0], sent)
                    yield message(chunk)
                    chunk = []
            if chunk or not sent:  # an empty call still sends one (the server says so)
                sent += len(chunk)
                most_sent[0] = max(most_sent[0], sent)
                yield message(chunk)

        def call(
            _request: None, *, timeout: float | None, metadata: Sequence[tuple[str, str]]
        ) -> signals_pb2.IngestResponse:
            return self.signals.Ingest(
                batches(), timeout=None if unbounded else timeout, metadata=metadata
            )

        try:
            reply = self._unary(call, None, timeout, retry_window=self.timeout)
        except grpc.RpcError as exc:
            exc.signals_sent, exc.signals_total = most_sent[0], total  # type: ignore[attr-defined]
            raise
        if not reply.HasField("still_retracted") and expiries[0]:
            warnings.warn(
                "the server predates Signal.expires_at: it stored these signals without"
                " their expiries (upgrade it before relying on expiries)",
                stacklevel=2,
            )
        return reply

    def retract(
        self,
        list_name: str,
        *,
        hashes: Iterable[HashInput] = (),
        signal_ids: Iterable[int] = (),
        reason: str = "",
        batch_size: int = 1000,
        timeout: float | None = None,
    ) -> signals_pb2.RetractResponse:
        """Retract by hash and/or signal id, ``batch_size`` targets a request (the server
        refuses more than its ``max_batch`` in one), ``timeout`` per request.

        The replies are summed into one: ``retracted`` and ``not_found_total`` add up,
        ``not_found`` keeps the first 1000 as a single reply does. Requests are separate
        retractions: a failure part way leaves the earlier ones done (retracting is
        idempotent, so send the whole call again).
        """
        targets: list[common_pb2.HashValue | int] = [hash_value(h) for h in hashes]
        targets += [int(i) for i in signal_ids]
        batch_size = max(1, batch_size)
        total = signals_pb2.RetractResponse()
        for start in range(0, max(len(targets), 1), batch_size):  # none: the server says so
            chunk = targets[start : start + batch_size]
            request = signals_pb2.RetractRequest(
                list_name=list_name,
                hashes=[t for t in chunk if not isinstance(t, int)],
                signal_ids=[t for t in chunk if isinstance(t, int)],
                reason=reason,
            )
            reply = self._unary(self.signals.Retract, request, timeout)
            total.retracted += reply.retracted
            total.not_found_total += reply.not_found_total
            room = MAX_NOT_FOUND_LISTED - len(total.not_found)
            total.not_found.extend(reply.not_found[: max(room, 0)])
        return total

    def list_hash_lists(self, *, timeout: float | None = None) -> signals_pb2.ListHashListsResponse:
        return self._unary(self.signals.ListHashLists, signals_pb2.ListHashListsRequest(), timeout)

    def changes(
        self,
        since: int = 0,
        *,
        signal_types: Sequence[str] = (),
        max_changes: int = 0,
        timeout: float | None = None,
    ) -> Iterator[signals_pb2.ChangesResponse]:
        """The change log after ``since``: ChangesResponse messages (every one carries
        ``head``, the ``since`` of the next call). Retried on UNAVAILABLE until the first
        message arrives; a stream broken after that raises (read it again from ``since``).
        With ``max_changes``, a reply with ``more`` set says to call again from ``head``."""
        request = signals_pb2.ChangesRequest(
            since=since, signal_types=list(signal_types), max_changes=max_changes
        )

        def first(
            _request: None, *, timeout: float | None, metadata: Sequence[tuple[str, str]]
        ) -> tuple[Iterator[signals_pb2.ChangesResponse], signals_pb2.ChangesResponse | None]:
            stream = self.signals.Changes(request, timeout=timeout, metadata=metadata)
            return stream, next(stream, None)

        stream, message = self._unary(first, None, timeout)
        while message is not None:
            yield message
            message = next(stream, None)

    def signal_states(
        self, signal_ids: Sequence[int], *, batch_size: int = 1000, timeout: float | None = None
    ) -> list[int]:
        """One ``SignalState`` value per id, in order (a few requests of ``batch_size``)."""
        out: list[int] = []
        ids = [int(i) for i in signal_ids]
        for start in range(0, len(ids), batch_size):
            request = signals_pb2.SignalStatesRequest(signal_ids=ids[start : start + batch_size])
            out.extend(self._unary(self.signals.SignalStates, request, timeout).states)
        return out

    # -- Admin ------------------------------------------------------------------------

    def stats(self, *, timeout: float | None = None) -> admin_pb2.StatsResponse:
        return self._unary(self.admin.Stats, admin_pb2.StatsRequest(), timeout)

    def rebuild(self, *, timeout: float | None = None) -> Iterator[admin_pb2.RebuildProgress]:
        """Progress messages; the last one has ``finished`` set."""
        return self.admin.RebuildIndex(
            admin_pb2.RebuildIndexRequest(), timeout=timeout, metadata=self.metadata
        )

    def snapshot(self, *, timeout: float | None = None) -> admin_pb2.SnapshotResponse:
        return self._unary(self.admin.Snapshot, admin_pb2.SnapshotRequest(), timeout)

    # -- health -----------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """``SERVING`` / ``NOT_SERVING`` / ... (no token needed)."""
        reply = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until health says SERVING (the index is loaded). A certificate the
        client cannot verify fails at once: waiting would not change it."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                last = self.health()
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if "CERTIFICATE_VERIFY_FAILED" in last:
                    raise ConnectionError(f"{last}{tls_hint(last)}") from None
            if time.monotonic() > deadline:
                hint = tls_hint(last) or "; is `hashmatch serve` running there?"
                raise TimeoutError(
                    f"the server did not become SERVING within {timeout:g} s (last: {last}){hint}"
                )
            time.sleep(0.05)
