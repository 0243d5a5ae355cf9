"""A typed Python client for the hashmatch gRPC service.

Why: upload pipelines and the ``hashmatch remote`` verbs should not hand-build
protobufs or re-implement retries. Unary calls (and ingest, and the start of
``changes``) are retried on UNAVAILABLE (server starting, index loading, restarting,
draining), and on the RESOURCE_EXHAUSTED of a momentary overload (it carries a
``google.rpc.RetryInfo``); the reads (match, match_stream, hash, list_hash_lists,
changes, signal_states, stats) also on a CANCELLED the client did not cause (a server
that begins to stop cancels the calls reaching it then), with exponential backoff
(``backoff`` doubling, at most 2 s, jittered): until the call's deadline when it has
one (the client's ``timeout`` by default), else up to ``retries`` times; ``retries=0``
never retries. A call's ``timeout``: seconds, None for no deadline (then up to
``retries`` retries), or by default ``CLIENT_TIMEOUT``, the client's (before, None
meant the client's too, so no call could go without a deadline). Every other status
is raised at once as :class:`grpc.RpcError` (use
:func:`hashmatch.server.errors.bad_request_fields` to read the field details), and so
is a TLS setup the server refuses, with ``connection_hint`` saying what is wrong (a
client certificate a mutual-TLS server does not take, no TLS to a TLS server).
``match_stream`` is retried from its first request not answered
(:class:`~hashmatch.server.client_shared.StreamPlan`); ``rebuild`` is not retried.

    with HashmatchClient("127.0.0.1:50051", token=os.environ["HASHMATCH_TOKEN"]) as c:
        reply = c.match([("pdq", "f8f8...")], threshold=31)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Unpack

import grpc

from hashmatch.server.client_shared import (
    CLIENT_TIMEOUT,
    HEALTH_CHECK_SECONDS,
    HEALTH_POLL_SECONDS,
    MAX_BACKOFF,
    MAX_NOT_FOUND_LISTED,
    MIN_ATTEMPT_SECONDS,
    RETRYABLE,
    STOP_GRACE_SECONDS,
    Attempts,
    CallTimeout,
    ClientBase,
    HashInput,
    IngestPlan,
    IngestStopped,
    MatchArgs,
    MatchPlan,
    MediaInput,
    PlaintextTokenWarning,
    SourceGuard,
    StreamPlan,
    add_retract_reply,
    changes_request,
    hash_request,
    hash_value,
    health_check_timeout,
    health_failure,
    health_request,
    health_status,
    hung_up_while_connecting,
    low_quality_enum,
    match_request,
    not_serving,
    note_reached,
    noting_reached,
    retract_progress,
    retract_requests,
    signal,
    stopped_between_attempts,
    stopped_then_failed,
    stopped_without_reply,
    tls_hint,
    video_signal,
)
from hashmatch.v1 import admin_pb2, matcher_pb2, signals_pb2

__all__ = [  # the builders and constants pipelines import from here
    "CLIENT_TIMEOUT",
    "MAX_BACKOFF",
    "MAX_NOT_FOUND_LISTED",
    "MIN_ATTEMPT_SECONDS",
    "RETRYABLE",
    "CallTimeout",
    "HashInput",
    "HashmatchClient",
    "IngestStopped",
    "MatchArgs",
    "MediaInput",
    "PlaintextTokenWarning",
    "hash_value",
    "low_quality_enum",
    "match_request",
    "signal",
    "tls_hint",
    "video_signal",
]


def _guarded(requests: Iterable[Any], reader: SourceGuard) -> Iterator[Any]:
    """``requests``, ending where they raise (kept by ``reader``)."""
    with reader.reading():
        yield from requests


#: How often a stoppable ingest looks at its stop event while it waits for the reply.
STOP_POLL_SECONDS = 0.1


def _reply_unless_stopped(
    future: grpc.Future, stop: threading.Event, grace: float
) -> signals_pb2.IngestResponse:
    """``future``'s reply; :class:`IngestStopped` once ``stop`` has been set for
    ``grace`` seconds without it, or when the call fails after the stop (a retry
    would send the signals the stop meant not to send)."""
    stopped_at: float | None = None
    while True:
        try:
            return future.result(timeout=STOP_POLL_SECONDS)
        except grpc.FutureTimeoutError:
            pass
        except grpc.RpcError as exc:
            if stop.is_set():
                raise stopped_then_failed(exc) from exc
            raise
        if stop.is_set():
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() - stopped_at >= grace:
                raise stopped_without_reply(grace)


class HashmatchClient(ClientBase):
    """Connects to one hashmatch server. Thread-safe (one channel, many calls). The
    constructor's arguments: :class:`~hashmatch.server.client_shared.ClientBase`."""

    channels = grpc

    # -- plumbing ---------------------------------------------------------------------

    def _unary(
        self,
        method: Callable,
        request: Any,
        timeout: CallTimeout | Attempts,
        *,
        idempotent: bool = False,
    ) -> Any:
        """``method(request)``, retried on UNAVAILABLE (:class:`Attempts`; ``timeout``:
        a :data:`CallTimeout`, or the Attempts of a call that needs its own;
        ``idempotent``: a read, also retried on a CANCELLED the client did not cause)."""
        if isinstance(timeout, Attempts):
            attempts = timeout
        else:
            attempts = self._attempts(timeout, idempotent=idempotent)
        while True:
            with attempts:
                return method(request, timeout=attempts.left(), metadata=self.metadata)
            self._between(attempts)

    def _between(self, attempts: Attempts) -> None:
        """Between two attempts: ask the server about a failure to connect that may be
        a TLS setup it refuses (raised at once when it is), then wait the pause."""
        if attempts.suspect is not None:
            details = attempts.suspect.details() or ""
            attempts.asked(self.connection_hint(details, attempts.deadline))
        time.sleep(attempts.pause or 0.0)

    def close(self) -> None:
        """Close the channel: calls in flight are cancelled (not retried), and a call
        made after this raises ``ValueError`` ("Cannot invoke RPC on closed channel!")."""
        self.closed = True  # first: the calls the close cancels are not retried
        self.channel.close()

    def __enter__(self) -> HashmatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Matcher ----------------------------------------------------------------------

    match_request = staticmethod(match_request)

    def match(
        self,
        hashes: Iterable[HashInput] = (),
        *,
        timeout: CallTimeout = CLIENT_TIMEOUT,
        **options: Unpack[MatchArgs],
    ) -> matcher_pb2.MatchResponse:
        """Look hashes and/or media up; options as :meth:`match_request` (e.g.
        ``match(media=[upload_bytes])``, ``match([("pdq", hex)], threshold=31)``): one
        ``QueryResult`` per query, hashes first, then media, then videos, each with its
        ``source`` and ``index`` in them, and its matches nearest first. More hashes
        (or video frames) than the client's ``max_batch`` go as several requests, whose
        replies are merged into the one a single request would have had
        (:class:`~hashmatch.server.client_shared.MatchPlan`); ``timeout`` is the whole
        call's deadline, all parts and their retries."""
        plan = MatchPlan(self.match_request(hashes, **options), self.max_batch)
        attempts = self._attempts(timeout, idempotent=True)
        replies = []
        for k, part in enumerate(plan.parts):
            with plan.sending(k):
                replies.append(self._unary(self.matcher.Match, part, attempts.renewed()))
        return plan.merged(replies)

    def match_stream(
        self, requests: Iterable[matcher_pb2.MatchRequest], *, timeout: CallTimeout = None
    ) -> Iterator[matcher_pb2.MatchResponse]:
        """Bidirectional stream: one response per request, in order. What ``requests``
        raises is raised after the replies to the requests before it. Closing the
        iterator (or dropping it) cancels the stream. ``timeout``: the whole stream's
        deadline, retries included (None, the default: none; CLIENT_TIMEOUT: the
        client's).

        A request of more than ``max_batch`` hashes (or video frames) goes as several
        messages, their replies merged into its one (as ``match``). A stream refused or
        cut with what ``match`` retries is retried on a new stream, from the first
        request not answered (:class:`~hashmatch.server.client_shared.StreamPlan`);
        ``retries`` counts failures in a row, without a reply between them. A failed
        call's error has ``results_delivered``, the replies the caller got."""
        attempts = Attempts(
            self._timeout(timeout),
            self.retries,
            self.backoff,
            retry_cancelled=self._open,
            diagnose=True,
        )
        plan = StreamPlan(self.max_batch, attempts)
        source = _guarded(requests, plan.reader)
        lock = threading.Lock()  # one reader of ``requests`` at a time, across attempts

        def sent(attempt: int, seq: int) -> Iterator[matcher_pb2.MatchRequest]:
            while plan.current(attempt):
                ended = plan.ended  # read first: once it is set, every part is in
                if (part := plan.part(seq)) is not None:
                    yield part
                    seq += 1
                elif ended:
                    return
                else:
                    with lock:  # a failed attempt's stream may still be reading it
                        if plan.part(seq) is None and not plan.ended:
                            plan.take(next(source, None))

        return self._stream_replies(plan, sent)

    def _stream_replies(
        self, plan: StreamPlan, sent: Callable[[int, int], Iterator[matcher_pb2.MatchRequest]]
    ) -> Iterator[matcher_pb2.MatchResponse]:
        """The results of ``plan``'s streams, each attempt's messages from ``sent``."""
        try:
            while not plan.done() or plan.attempt == 0:
                messages = sent(*plan.begin())
                with plan.attempts:
                    call = self.matcher.MatchStream(
                        messages, timeout=plan.attempts.left(), metadata=self.metadata
                    )
                    try:
                        for reply in call:
                            if (result := plan.answer(reply)) is not None:
                                yield result
                    finally:
                        call.cancel()  # nothing when it has ended
                    break
                self._between(plan.attempts)
        except grpc.RpcError as exc:
            plan.failed(exc)
            raise
        plan.reader.raise_error(results_delivered=plan.delivered)

    def hash(
        self,
        media: MediaInput | Iterable[MediaInput],
        signal_types: str | Sequence[str] = ("pdq",),
        *,
        dihedral: bool = False,
        trim_borders: bool = False,
        timeout: CallTimeout = CLIENT_TIMEOUT,
    ) -> matcher_pb2.HashResponse:
        """The hashes of ``media`` (one bytes value is one item), no lookup: one
        ``MediaHashes`` per item in ``items``, its ``hashes`` one ``ComputedHash`` per
        type (``hex`` and ``qualities``; ``signal_types``: a list or one name)."""
        request = hash_request(media, signal_types, dihedral=dihedral, trim_borders=trim_borders)
        return self._unary(self.matcher.Hash, request, timeout, idempotent=True)

    # -- Signals ----------------------------------------------------------------------

    def ingest(
        self,
        list_name: str,
        signals: Iterable[signals_pb2.Signal] | Callable[[], Iterable[signals_pb2.Signal]],
        *,
        source: str = "",
        strict: bool = False,
        batch_size: int = 1000,
        timeout: CallTimeout = CLIENT_TIMEOUT,
        total: int | None = None,
        request_id: str | None = None,
        stop: threading.Event | None = None,
        stop_grace: float = STOP_GRACE_SECONDS,
    ) -> signals_pb2.IngestResponse:
        """Stream ``signals`` into ``list_name``, ``batch_size`` signals a message (fewer
        once a message holds MAX_INGEST_MESSAGE_BYTES, 8 MiB: long vPDQ videos).

        ``signals``: an iterable, read whole first (a retry sends it again), or a
        callable that returns a fresh iterable of the same signals each time it is
        called: then nothing is held in memory (a file of 10M signals streams in
        constant memory) and a retry calls it again. ``total``: with a callable, how
        many signals it yields (an upper bound will do): the default deadline and
        ``signals_total`` come from it; without it the stream has no deadline unless
        ``timeout`` is given.

        Ingest is an upsert, so re-sending from the first signal is always safe (what
        was stored already counts as ``unchanged``): that is how a call that meets
        UNAVAILABLE is retried, for up to the client's timeout of unavailability. Every
        attempt carries the call's ``request_id``: when the server had applied an
        attempt whose reply was lost, the retry gets that attempt's counts. A new one
        per call, or the caller's ``request_id`` (at most 128 characters): a pipeline
        that runs the same call again after its own crash gets the first run's reply
        if the server answered it within the last 10 minutes.

        ``timeout`` bounds the whole stream; by default it is the client's timeout per
        message (batch), not for all of them: a large file takes longer than 30 s to
        send while the server stores each message as it arrives.

        ``strict`` applies per message, not per call: the server refuses a message
        (``batch_size`` signals) holding a bad item, and the call fails, but the messages
        before it are stored. For all or nothing, send one message (``batch_size`` at
        least the number of signals, within the server's ``max_batch`` and 8 MiB).

        A failed call's ``RpcError`` gets ``signals_total`` and ``signals_sent``: the
        most signals any attempt handed to gRPC, an upper bound on what was stored (the
        reply acknowledges nothing per message, so a cut-off stream may have stored
        less: to finish the job, re-send from the first signal).

        ``stop``: an event that ends the call early and exactly. Once it is set, no
        further message is sent (not the one being filled either), the stream is
        half-closed and the server's reply for the messages it got is returned: its
        counts are what is stored (the caller tells a stopped call by ``stop.is_set()``).
        The reply is waited for ``stop_grace`` seconds at most; past that, or when the
        call fails after the stop or the stop comes between attempts (none is retried
        then), it raises :class:`IngestStopped`, whose ``signals_sent`` is an upper
        bound. Why: a stop that cancelled the call (``hashmatch remote ingest`` and
        Ctrl-C) could only say how much was sent, not what the server stored.
        """
        src = signals if callable(signals) else list(signals)
        plan = IngestPlan(
            list_name,
            src,
            total,
            self.timeout,
            source=source,
            strict=strict,
            batch_size=batch_size,
            timeout=timeout,
            request_id=request_id,
        )
        with plan.reporting():
            if stop is None:
                call = plan.call(self.signals.Ingest, plan.messages)
            else:
                call = self._stoppable_ingest(plan, stop, stop_grace)
            attempts = plan.attempts(self.retries, self.backoff)
            return plan.checked(self._unary(call, None, attempts))

    def _stoppable_ingest(
        self, plan: IngestPlan, stop: threading.Event, grace: float
    ) -> Callable[..., signals_pb2.IngestResponse]:
        """An ingest attempt for ``_unary`` that ``stop`` ends early (see ``ingest``):
        the call runs as a future, so its reply is waited for in steps (and for
        ``grace`` seconds at most once stopped) and the call cancelled when not had."""

        def attempt(_request: None, *, timeout: float | None, metadata: Any) -> Any:
            if stop.is_set():  # during a retry's pause
                raise stopped_between_attempts()
            future = self.signals.Ingest.future(
                plan.messages(stop), timeout=timeout, metadata=metadata
            )
            try:
                return _reply_unless_stopped(future, stop, grace)
            except grpc.RpcError as exc:
                # a server killed mid-stream: its retries' "failed to connect" must not
                # hide that this attempt reached it (the CLI's ingest always stops)
                note_reached(exc, plan.reached)
                future.cancel()
                raise
            except BaseException:
                future.cancel()
                raise

        return attempt

    def retract(
        self,
        list_name: str,
        *,
        hashes: Iterable[HashInput] = (),
        signal_ids: Iterable[int] = (),
        reason: str = "",
        batch_size: int = 1000,
        timeout: CallTimeout = CLIENT_TIMEOUT,
        request_id: str | None = None,
    ) -> signals_pb2.RetractResponse:
        """Retract by hash and/or signal id, ``batch_size`` targets a request (the server
        refuses more than its ``max_batch`` in one), ``timeout`` (by default the client's)
        the whole call's deadline, all requests and their retries (as ``match``), each
        request with its own ``request_id`` (a retry whose first attempt was applied, its reply
        lost, gets that attempt's count, not 0): new ones, or the caller's
        ``request_id`` for one request, ``<request_id>.<n>`` for the n-th of several.

        The replies are summed into one: ``retracted`` and ``not_found_total`` add up,
        ``not_found`` keeps the first 1000 as a single reply does. Requests are separate
        retractions: a failure part way leaves the earlier ones done, summed in the
        error's ``retracted_before`` (retracting is idempotent, so send the whole call
        again; its reply counts only what the first did not retract).
        """
        total = signals_pb2.RetractResponse()
        requests = retract_requests(
            list_name,
            hashes=hashes,
            signal_ids=signal_ids,
            reason=reason,
            batch_size=batch_size,
            request_id=request_id,
        )
        attempts = self._attempts(timeout)
        reached: list[bool] = []
        retract = noting_reached(self.signals.Retract, reached)
        with retract_progress(total, reached):
            for request in requests:
                reply = self._unary(retract, request, attempts.renewed())
                add_retract_reply(total, reply)
        return total

    def list_hash_lists(
        self, *, timeout: CallTimeout = CLIENT_TIMEOUT
    ) -> signals_pb2.ListHashListsResponse:
        """The lists this token's tenant may see (``lists``: name, counts, ``uid``...),
        with ``tenant`` and ``store_id``."""
        request = signals_pb2.ListHashListsRequest()
        return self._unary(self.signals.ListHashLists, request, timeout, idempotent=True)

    def changes(
        self,
        since: int = 0,
        *,
        signal_types: str | Sequence[str] = (),
        max_changes: int = 0,
        since_signal_id: int | None = None,
        timeout: CallTimeout = CLIENT_TIMEOUT,
    ) -> Iterator[signals_pb2.ChangesResponse]:
        """The change log after ``since``: ChangesResponse messages (every one carries
        ``head``, the ``since`` of the next call). Retried on UNAVAILABLE until the first
        message arrives; a stream broken after that raises (read it again from ``since``).
        With ``max_changes``, a reply with ``more`` set says to call again from ``head``;
        ``since_signal_id`` (0 at an entry's end) lets it stop inside a log entry: then
        from (``head``, ``head_signal_id``)."""
        request = changes_request(since, signal_types=signal_types, max_changes=max_changes,
                                  since_signal_id=since_signal_id)  # fmt: skip

        def first(
            _request: None, *, timeout: float | None, metadata: Sequence[tuple[str, str]]
        ) -> tuple[Iterator[signals_pb2.ChangesResponse], signals_pb2.ChangesResponse | None]:
            stream = self.signals.Changes(request, timeout=timeout, metadata=metadata)
            return stream, next(stream, None)

        stream, message = self._unary(first, None, timeout, idempotent=True)
        while message is not None:
            yield message
            message = next(stream, None)

    def signal_states(
        self,
        signal_ids: Sequence[int],
        *,
        batch_size: int = 1000,
        timeout: CallTimeout = CLIENT_TIMEOUT,
    ) -> list[int]:
        """One ``SignalState`` value per id, in order (a few requests of ``batch_size``;
        ``timeout``, by default the client's, is the whole call's deadline, as ``match``)."""
        out: list[int] = []
        ids = [int(i) for i in signal_ids]
        attempts = self._attempts(timeout, idempotent=True)
        for start in range(0, len(ids), batch_size):
            request = signals_pb2.SignalStatesRequest(signal_ids=ids[start : start + batch_size])
            reply = self._unary(self.signals.SignalStates, request, attempts.renewed())
            out.extend(reply.states)
        return out

    # -- Admin ------------------------------------------------------------------------

    def stats(self, *, timeout: CallTimeout = CLIENT_TIMEOUT) -> admin_pb2.StatsResponse:
        """Counts per type, list and shard, the index kind, memory, snapshot age (the
        admin role)."""
        return self._unary(self.admin.Stats, admin_pb2.StatsRequest(), timeout, idempotent=True)

    def rebuild(self, *, timeout: CallTimeout = None) -> Iterator[admin_pb2.RebuildProgress]:
        """Progress messages; the last one has ``finished`` set."""
        return self.admin.RebuildIndex(
            admin_pb2.RebuildIndexRequest(), timeout=self._timeout(timeout), metadata=self.metadata
        )

    def snapshot(self, *, timeout: CallTimeout = CLIENT_TIMEOUT) -> admin_pb2.SnapshotResponse:
        """Write an index snapshot (the admin role): the reply's ``path`` names it."""
        return self._unary(self.admin.Snapshot, admin_pb2.SnapshotRequest(), timeout)

    # -- health -----------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = HEALTH_CHECK_SECONDS) -> str:
        """``SERVING`` / ``NOT_SERVING`` / ... (no token needed)."""
        reply = self.health_stub.Check(health_request(service), timeout=timeout)
        return health_status(reply)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until health says SERVING (the index is loaded). A certificate the
        client cannot verify, or a TLS setup the server refuses (a client certificate
        a mutual-TLS server does not take, no TLS to a TLS server), fails at once
        (ConnectionError): waiting would not change it."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        found = None  # the server asked, once, about a connection it hung up on
        while True:
            try:
                last = self.health(timeout=health_check_timeout(deadline))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                if found is None and hung_up_while_connecting(exc):
                    found = self.connection_hint(exc.details() or "", deadline)
                last = health_failure(exc, found)
            if time.monotonic() > deadline:
                raise not_serving(timeout, last)
            time.sleep(HEALTH_POLL_SECONDS)
