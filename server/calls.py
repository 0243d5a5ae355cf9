"""The shared skin of every RPC: authenticate, check the role, time, log, count, map errors.

Servicer methods decorated with :func:`rpc` receive a :class:`Call` and stay free of
plumbing: they validate, call the engine, and raise typed errors.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from hashmatch.engine.store_lock_wait import wanted_while
from hashmatch.server import errors
from hashmatch.server.auth import NO_AUTH_PRINCIPAL, Principal, TokenAuth, Unauthenticated
from hashmatch.server.decoding import CHECKS_UNDECODABLE, Undecodable
from hashmatch.server.metrics import Metrics

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from hashmatch.engine.errors import HashmatchError

access_log = logging.getLogger("hashmatch.access")


class CallSlots:
    """At most ``limit`` request-streaming calls at once, and at most ``per_tenant`` of
    them for one tenant; beyond, RESOURCE_EXHAUSTED at once.

    Why: a call that streams its requests (MatchStream, Ingest) holds a worker thread
    while its client sends nothing, and one that streams its replies (Changes) while its
    client reads nothing; capping them (``ServerConfig.request_streams_limit``,
    half the threads) leaves threads for unary calls and health checks, which gRPC's own
    ``maximum_concurrent_rpcs`` (it counts every call alike) cannot do. The per-tenant
    share keeps one tenant's idle streams from refusing every other tenant's Ingest.
    """

    def __init__(
        self,
        limit: int,
        per_tenant: int | None = None,
        kind: str = "streams (MatchStream, Ingest, Changes)",
    ):
        self.limit = limit
        self.per_tenant = per_tenant or max(1, limit // 2)
        self.kind = kind  # what the refusals name
        self._used = 0
        self._by_tenant: dict[str, int] = {}
        self._lock = threading.Lock()  # lock + count: a third of a Semaphore's cost

    def take(self, tenant: str | None = None) -> bool:
        """True once a slot is taken (give it back with :meth:`give_back`)."""
        with self._lock:
            if self._used >= self.limit:
                raise errors.Overloaded(
                    f"the server is at its limit of {self.limit} concurrent {self.kind};"
                    " retry with backoff"
                )
            held = self._by_tenant.get(tenant, 0)
            if tenant is not None and held >= self.per_tenant:
                raise errors.Overloaded(
                    f"this tenant already has {held} concurrent {self.kind}, its limit;"
                    " retry with backoff"
                )
            self._used += 1
            self._by_tenant[tenant] = held + 1
        return True

    def give_back(self, tenant: str | None = None) -> None:
        with self._lock:
            self._used -= 1
            left = self._by_tenant.get(tenant, 1) - 1
            if left > 0:
                self._by_tenant[tenant] = left
            else:
                self._by_tenant.pop(tenant, None)


class InFlight:
    """How many handlers are running, so a stop can wait for them before it closes the
    engine. Why: grpcio's ``stop(grace)`` cancels calls at the grace's end but does not
    wait for their handler threads; closing SQLite under a handler that is still
    writing crashed the process (a segfault, seen with an Ingest stream in flight)."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition(threading.Lock())

    def enter(self) -> None:
        with self._idle:
            self._count += 1

    def leave(self) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every running handler to return."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


class CallHost(Protocol):
    """What :func:`rpc` needs from the servicer's shared state."""

    auth: TokenAuth | None  # None = explicit no-auth mode
    metrics: Metrics
    slots: CallSlots
    inflight: InFlight
    stopping: bool  # the server is draining: a stream cut now was cut by it

    def check_serving(self, method: str) -> None: ...


class _Servicer(Protocol):
    """A servicer whose methods :func:`rpc` wraps: they reach the shared state as ``host``."""

    @property
    def host(self) -> CallHost: ...


@dataclass
class Call:
    method: str
    principal: Principal
    context: grpc.ServicerContext
    log: dict[str, Any] = field(default_factory=dict)  # extra fields for the access log
    # Re-checks the token when the tokens file was reloaded (SIGHUP) since the call began:
    # a long stream must not outlive the removal of its token (set by calls.rpc).
    recheck: Callable[[], None] | None = None
    # Whose share of the bounded queues (request streams, media pool, lookup queue) the
    # call takes: its tenant as it began; None in no-auth mode (one caller, no share).
    share: str | None = None

    def time_left(self) -> float | None:
        """Seconds left on the call, None = no deadline.

        Why: grpcio reports a call without a deadline as a huge remaining time (years),
        beyond ``threading.TIMEOUT_MAX``; a wait on it (a queued lookup's
        ``future.result(timeout=...)``) raised OverflowError, an INTERNAL error for
        every deadline-less call that had to queue. Waits use this, never
        ``context.time_remaining()`` directly.
        """
        return _seconds_left(self.context)

    def check_deadline(self) -> None:
        """Stop work the client no longer waits for."""
        left = self.time_left()
        if left is not None and left <= 0:
            raise errors.DeadlineExceeded("deadline passed; work stopped")
        if not self.context.is_active():  # logged as the client's cancel, not a deadline
            raise errors.Cancelled("the client cancelled the call; work stopped")
        if self.recheck is not None:
            self.recheck()


def _seconds_left(context: grpc.ServicerContext) -> float | None:
    """``context.time_remaining()``, with grpcio's "no deadline" (more than a wait can
    take) as None."""
    left = context.time_remaining()
    if left is None or left > threading.TIMEOUT_MAX:
        return None
    return left


#: ``json.dumps(..., default=str)`` built a new encoder for every line (its keyword
#: arguments bypass json's cached default encoder); the same output from one kept.
_ACCESS_JSON = json.JSONEncoder(default=str)


def _log_access(fields: dict[str, Any]) -> None:
    """One JSON access-log line of ``fields``, ``ts`` (UTC, ms) first: the log's format
    is the operator's (``%(message)s`` by default) and a line in a file or log store
    must still say when. ``access_log.info`` without the caller lookup (file/line of this
    function would be all it finds): the record goes to the same filters and handlers."""
    record = access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, "", None, None, "rpc"
    )
    when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    record.msg = _ACCESS_JSON.encode({"ts": when.isoformat(timespec="milliseconds"), **fields})
    access_log.handle(record)


def _authenticate(host: CallHost, context: grpc.ServicerContext) -> Principal:
    if host.auth is None:
        return NO_AUTH_PRINCIPAL
    return host.auth.authenticate(context.invocation_metadata())


def _other_terms(terms: tuple[str, bool]) -> Unauthenticated:
    """A reload gave the call's token another tenant or ``all_lists`` than it began with.

    Why: a call may hold what it read under the old terms (Changes reads the lists it
    may show once, as it starts), so an operator who took ``all_lists`` back from a
    tenant saw its open Changes stream go on handing over every list's hashes.
    """
    tenant, all_lists = terms
    return Unauthenticated(
        f"the tokens file was reloaded: this token no longer names tenant {tenant!r} with"
        f" all_lists = {str(all_lists).lower()}, as when the call began; call again",
        field="authorization",
    )


STOPPED_STREAM = "the server is shutting down: the drain ended with the stream open"
STOP_SETTLE_SECONDS = 0.1
# A client whose deadline passes cancels the call (HTTP/2 RST_STREAM) at its own clock;
# the server's deadline was set when the call arrived, a little later, so at that
# moment it still has up to the transit time left: an inactive call this close to its
# deadline ended by the deadline, not by a cancel (seen: 0.3 s calls logged CANCELLED).
DEADLINE_SKEW_SECONDS = 0.1
# statuses that already say the client went away (a deadline or a cancel)
_GONE = ("DEADLINE_EXCEEDED", "CANCELLED")


def _ended_by_deadline(context: grpc.ServicerContext) -> bool:
    """Whether a call that is no longer active ended because its deadline passed."""
    left = _seconds_left(context)
    return left is not None and left <= DEADLINE_SKEW_SECONDS


def _cancelled_by_client(context: grpc.ServicerContext) -> bool | None:
    """Whether the ended call was cancelled on the client's side (its cancel, or its
    deadline passing) rather than completed with the status the server sent; None when
    this grpcio does not say.

    Why: grpcio's servicer context has no public way to ask (grpc.aio's has
    ``cancelled()``); its private call state does, once the call has terminated: the
    transport reports whether the server's status was delivered or the stream was
    reset first. A handler cannot tell by itself: a request stream the client's reset
    ended can read as quietly finished with the call still active.
    """
    client = getattr(getattr(context, "_state", None), "client", None)
    return None if not isinstance(client, str) else client == "cancelled"


def _client_gone(
    host: CallHost, context: grpc.ServicerContext, exc: Exception
) -> HashmatchError | None:
    """The status to record for ``exc`` if it only says the call went away.

    grpcio raises a bare ``grpc.RpcError`` from a request iterator when the client
    cancels or its deadline passes while the server waits for the next message. That
    is the client's doing, not an internal error: record CANCELLED or DEADLINE_EXCEEDED,
    and do not abort (there is nobody left to send a status to). While the server
    drains, the stop cancels the streams still open at its end: that is the server's
    doing, and the log says so.
    """
    if not isinstance(exc, grpc.RpcError) or context.is_active():
        return None
    if _ended_by_deadline(context):
        return errors.DeadlineExceeded("deadline passed while reading the request stream")
    if getattr(host, "stopping", False):
        return errors.Cancelled(STOPPED_STREAM)
    return errors.Cancelled("the client cancelled the call while sending its request stream")


def _cut_by_stop(host: CallHost, context: grpc.ServicerContext) -> HashmatchError | None:
    """A request stream that ended because the server's stop cancelled the call (grpcio
    then ends the iterator quietly, or raises: see :func:`_client_gone`). Only while
    stopping: grpcio can end the iterator a moment before the call reads as inactive,
    so that moment is waited for (at most STOP_SETTLE_SECONDS; a stream the client
    closed itself stays active and is logged OK)."""
    if not getattr(host, "stopping", False):
        return None
    deadline = time.monotonic() + STOP_SETTLE_SECONDS
    while context.is_active():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)
    return errors.Cancelled(STOPPED_STREAM)


def log_refused(method: str, peer: str, message: str, seconds: float) -> None:
    """The access-log line of a call refused before its handler ran (no known token:
    see ``app.AuthGate``), in the same form as every other call's; ``seconds`` since
    gRPC handed the call over (it waited for a thread: before, logged as 0 ms)."""
    if access_log.isEnabledFor(logging.INFO):
        _log_access({"method": method, "tenant": None, "status": "UNAUTHENTICATED",
                     "ms": round(seconds * 1000, 3), "peer": peer,
                     "error": errors.clip(message)})  # fmt: skip


def _check_decoded(request: Any) -> None:
    """A request grpcio could not decode (see :mod:`.decoding`) is the caller's mistake."""
    if type(request) is Undecodable:
        raise request.error()


def rpc(
    role: str, *, needs_index: bool = True, request_stream: bool = False, slot: bool | None = None
) -> Callable:
    """Decorate ``method(self, request_or_iterator, call)`` of a servicer.

    ``request_stream``: the client streams its requests. ``slot`` (default: as
    ``request_stream``): the call takes one of the host's :class:`CallSlots` for as long
    as it runs, because its client can hold the thread by doing nothing: idle in its
    request stream, or not reading a response stream (grpcio's handler thread waits for
    each streamed message to be taken by the client's flow-control window).
    """
    takes_slot = request_stream if slot is None else slot

    def decorate(fn: Callable) -> Callable:
        name = fn.__name__
        streaming = inspect.isgeneratorfunction(fn)
        stream = streaming or request_stream  # its duration is no unary latency

        def counted(requests: Iterator[Any], host: CallHost) -> Iterator[Any]:
            """The client's stream, each message counted as it is read."""
            received = host.metrics.stream_message(name, "received")
            for request in requests:
                received.inc()
                yield request

        def begin(self: _Servicer, context: grpc.ServicerContext) -> Call:
            host = self.host
            call = Call(name, _authenticate(host, context), context)
            call.share = None if host.auth is None else call.principal.tenant
            seen = [host.auth]
            terms = (call.principal.tenant, call.principal.all_lists)

            def recheck() -> None:
                if host.auth is seen[0]:  # no reload since: one identity test per message
                    return
                seen[0] = host.auth
                call.principal = _authenticate(host, context)  # Unauthenticated if removed
                call.principal.require(role)
                if (call.principal.tenant, call.principal.all_lists) != terms:
                    raise _other_terms(terms)

            call.recheck = recheck
            return call

        def admit(self: _Servicer, call: Call) -> None:
            """Role and readiness, checked once the caller is known (so a refused call's
            access-log line names its tenant)."""
            call.principal.require(role)
            if needs_index:
                self.host.check_serving(name)

        def finish(
            self: _Servicer,
            context: grpc.ServicerContext,
            call: Call | None,
            started: float,
            exc: BaseException | None,
            admitted: bool,
        ) -> None:
            """Log and count the call. ``admitted``: it got past authentication, its
            role, the readiness check and its request-stream slot; only such calls, and
            not those refused for a full queue either, are timed in the histograms."""
            code = "OK" if exc is None else errors.to_status(exc)[0].name
            left = _seconds_left(context)
            if exc is None:
                # a reply made past the deadline never reaches the client as OK; and
                # grpcio may end a request stream at the deadline a moment before the
                # call reads as inactive, so the deadline is read first
                if left is not None and left <= 0:
                    code = "DEADLINE_EXCEEDED"
                elif not context.is_active():
                    code = "DEADLINE_EXCEEDED" if _ended_by_deadline(context) else "CANCELLED"
            seconds = time.perf_counter() - started
            if left is not None and left <= DEADLINE_SKEW_SECONDS and code not in _GONE:
                # Within the skew of its deadline, whether the client saw this status or
                # its deadline is known only once the call has ended: grpcio may end a
                # request stream quietly when the client's deadline reset it, the call
                # still reading as active (seen 13 ms before the server's deadline, the
                # client's having passed). Counted and logged then, from its end state.
                def settle(code: str = code) -> None:
                    cancelled = _cancelled_by_client(context)
                    record(self, context, call, seconds, admitted, exc,
                           "DEADLINE_EXCEEDED" if cancelled else code)  # fmt: skip

                if not context.add_callback(settle):
                    settle()  # the call has ended already
                return
            record(self, context, call, seconds, admitted, exc, code)

        def record(
            self: _Servicer,
            context: grpc.ServicerContext,
            call: Call | None,
            seconds: float,
            admitted: bool,
            exc: BaseException | None,
            code: str,
        ) -> None:
            """Count and access-log the call as ended with ``code``."""
            timed = admitted and not isinstance(exc, errors.Overloaded)
            self.host.metrics.finished(name, code, seconds, stream=stream, timed=timed)
            if not access_log.isEnabledFor(logging.INFO):
                return
            record = {
                "method": name,
                "tenant": call.principal.tenant if call else None,
                "status": code,
                "ms": round(seconds * 1000, 3),
                "peer": context.peer(),
            }
            if call:
                record.update(call.log)
            if exc is not None:
                # the status message the client got: a refusal's first violation clipped
                # with its "; and N more" kept (cutting the whole text at 300 characters
                # lost the count when the first echoed a long client string)
                mapped, message, _status = errors.to_status(exc)
                if mapped is not grpc.StatusCode.INTERNAL:  # logged with its traceback
                    record["error"] = message
            _log_access(record)

        if streaming:

            @functools.wraps(fn)
            def stream_wrapper(
                self: _Servicer, request: Any, context: grpc.ServicerContext
            ) -> Iterator[Message]:
                started = time.perf_counter()
                self.host.metrics.inflight.inc()
                self.host.inflight.enter()
                call = None
                failure: BaseException | None = None
                slot = admitted = False
                try:
                    call = begin(self, context)
                    slot = takes_slot and self.host.slots.take(call.share)
                    admit(self, call)
                    admitted = True
                    _check_decoded(request)
                    if request_stream:
                        request = counted(request, self.host)
                    sent = self.host.metrics.stream_message(name, "sent")
                    replies = fn(self, request, call)
                    try:
                        for reply in replies:
                            sent.inc()
                            yield reply
                    finally:  # as `yield from` would: its own finally runs first
                        replies.close()
                    cut = _cut_by_stop(self.host, context)
                    if cut is not None:  # the stop ended the request stream: not an OK
                        failure = cut
                        return  # nobody to send a status to
                except Exception as exc:
                    failure = _client_gone(self.host, context, exc) or exc
                    if failure is not exc:
                        raise  # grpcio's own error: it ends the dead call quietly
                finally:
                    if slot:
                        self.host.slots.give_back(call.share)
                    self.host.inflight.leave()
                    finish(self, context, call, started, failure, admitted)
                if failure is not None:
                    errors.abort(context, failure)

            setattr(stream_wrapper, CHECKS_UNDECODABLE, True)
            return stream_wrapper

        @functools.wraps(fn)
        def unary_wrapper(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Message:
            started = time.perf_counter()
            self.host.metrics.inflight.inc()
            self.host.inflight.enter()
            call = None
            failure: BaseException | None = None
            slot = admitted = False
            try:
                call = begin(self, context)
                slot = takes_slot and self.host.slots.take(call.share)
                admit(self, call)
                admitted = True
                _check_decoded(request)
                if request_stream:
                    request = counted(request, self.host)
                # a store write behind another process's write lock stops waiting once
                # the client is gone (its deadline, a cancel), not after the 60 s
                with wanted_while(call.check_deadline):
                    return fn(self, request, call)
            except Exception as exc:
                failure = _client_gone(self.host, context, exc) or exc
                if failure is not exc:
                    raise  # grpcio's own error: it ends the dead call quietly
            finally:
                if slot:
                    self.host.slots.give_back(call.share)
                self.host.inflight.leave()
                finish(self, context, call, started, failure, admitted)
            errors.abort(context, failure)

        setattr(unary_wrapper, CHECKS_UNDECODABLE, True)
        return unary_wrapper

    return decorate
