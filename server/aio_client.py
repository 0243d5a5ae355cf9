"""An asyncio client for the hashmatch gRPC service, on ``grpc.aio``.

Why: upload pipelines are often asyncio services (FastAPI, aiohttp, asyncio workers);
the threaded :class:`hashmatch.server.client.HashmatchClient` blocks their event loop.
This one takes the same constructor arguments and has the same semantics (requests,
retries on UNAVAILABLE until the deadline, ingest batching, deadlines and partial
progress, errors as :class:`grpc.RpcError`), from the same shared code
(:mod:`hashmatch.server.client_shared`); only the waiting is ``await``. Cancelling the
coroutine (or task) that awaits a call cancels its RPC on the server.

    async with AsyncHashmatchClient("127.0.0.1:50051", token=token) as c:
        await c.ingest("partner-a", [signal("pdq", hex_hash)])
        replies = await asyncio.gather(*(c.match([("pdq", h)]) for h in hexes))

Create it inside the event loop that uses it (in a coroutine): a ``grpc.aio`` channel
belongs to one loop. Not for use from several threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Unpack

import grpc
import grpc.aio

from hashmatch.server import client_shared as shared
from hashmatch.server.client_shared import IngestStopped, match_request, signal, video_signal
from hashmatch.v1 import admin_pb2, matcher_pb2, signals_pb2

__all__ = ["AsyncHashmatchClient", "IngestStopped", "match_request", "signal", "video_signal"]

SignalSource = (
    Iterable[signals_pb2.Signal]
    | AsyncIterable[signals_pb2.Signal]
    | Callable[[], Iterable[signals_pb2.Signal] | AsyncIterable[signals_pb2.Signal]]
)


async def _items(source: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    """An async or plain iterable as an async one (a plain one is read in the loop)."""
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


async def _guarded(requests: Any, reader: shared.SourceGuard) -> AsyncIterator[Any]:
    """``requests`` (plain or async), ending where they raise (kept by ``reader``)."""
    with reader.reading():
        async for request in _items(requests):
            yield request


async def _next(source: AsyncIterator[Any]) -> Any:
    """The next item of ``source``, None at its end."""
    return await anext(source, None)


async def _read(call: Any) -> Any:
    """The next message of a server stream, or None at its end."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message


class _StoppableWrites:
    """One stoppable ingest attempt's writing (see ``AsyncHashmatchClient.ingest``): the
    messages written on the call, then its half-close; and whether the source is being
    waited on, where a stop may cancel the writing at once.

    Why write the messages ourselves (not as gRPC's request iterator): a source that
    waits (a queue gone idle) kept the stream open until its next signal, or the
    grace ran out, inexact; cancelled in that wait, the stream is half-closed at once
    and the reply says what is stored. Never cancelled in a write: a message half
    handed to gRPC would leave the stream in an unknown state."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.in_source = False
        self.cut = False  # cancelled in the source's wait by the stop
        self.task: asyncio.Future | None = None

    async def items(self, source: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``source``'s items until the stop (checked before each wait and after it)."""
        while not self.stop.is_set():
            self.in_source = True
            try:
                item = await anext(source, _END)
            finally:
                self.in_source = False
            if item is _END or self.stop.is_set():
                return
            yield item

    def start(self, call: Any, messages: AsyncIterator[Any]) -> None:
        self.task = asyncio.ensure_future(self._write(call, messages))

    async def _write(self, call: Any, messages: AsyncIterator[Any]) -> None:
        try:
            async for message in messages:
                await call.write(message)
        except asyncio.CancelledError:
            if not self.cut:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # the call ended (a refusal, its deadline): its status says why
        except Exception:  # not the source's (kept for the reply): end the call, not hang
            call.cancel()
            raise
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
            await call.done_writing()

    def stopped(self) -> None:
        """The stop is set: end the writing now if it waits on the source (else it
        ends before its next wait)."""
        if self.in_source and self.task is not None and not self.task.done():
            self.cut = True
            self.task.cancel()

    def cancel(self) -> None:
        """The reply is had, or given up: end the writing (or take its error: the call
        it cancelled said CANCELLED)."""
        if self.task is None:
            return
        if not self.task.done():
            self.task.cancel()
        elif not self.task.cancelled():
            self.task.exception()  # retrieved: asyncio would log it as never retrieved


_END = object()


async def _reply_unless_stopped(
    call: Any, stop: asyncio.Event, grace: float, writes: _StoppableWrites
) -> Any:
    """The reply of the stream-unary ``call``; :class:`IngestStopped` once ``stop`` has
    been set for ``grace`` seconds without it, or when the call fails after the stop (a
    retry would send the signals the stop meant not to send). The call is cancelled
    when its reply is not had (the grace ran out, or the awaiting task was cancelled)."""
    reply = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({reply, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():  # stopped: the stream ends now, or after the message in hand
            writes.stopped()
            await asyncio.wait({reply}, timeout=grace)
            if not reply.done():
                raise shared.stopped_without_reply(grace)
        return reply.result()
    except grpc.RpcError as exc:
        if stop.is_set():
            raise shared.stopped_then_failed(exc) from exc
        raise
    finally:
        stopped.cancel()
        if not reply.done():
            call.cancel()
            reply.cancel()
        writes.cancel()


class AsyncHashmatchClient(shared.ClientBase):
    """Connects to one hashmatch server from asyncio: one channel, any number of
    concurrent calls (``asyncio.gather`` them). The constructor's arguments:
    :class:`~hashmatch.server.client_shared.ClientBase`, as the sync client's."""

    channels = grpc.aio

    # -- plumbing ---------------------------------------------------------------------

    def _check_context(self) -> None:
        """A grpc.aio channel belongs to the loop it was made in: made outside one, its
        first call fails with grpcio's 'attached to a different loop'."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "create AsyncHashmatchClient inside a coroutine, in the event loop that"
                " will use it (e.g. in FastAPI's lifespan, not at import time)"
            ) from None

    async def _unary(
        self,
        method: Callable,
        request: Any,
        timeout: shared.CallTimeout | shared.Attempts,
        *,
        idempotent: bool = False,
    ) -> Any:
        """``await method(request)``, retried on UNAVAILABLE as the sync client does
        (``timeout``: a :data:`~hashmatch.server.client_shared.CallTimeout`, or a
        call's own Attempts; ``idempotent``: a read, also retried on a CANCELLED the
        client did not cause)."""
        if isinstance(timeout, shared.Attempts):
            attempts = timeout
        else:
            attempts = self._attempts(timeout, idempotent=idempotent)
        while True:
            with attempts:
                return await method(request, timeout=attempts.left(), metadata=self.metadata)
            await self._between(attempts)

    async def _between(self, attempts: shared.Attempts) -> None:
        """Between two attempts, as the sync client's; the server is asked from a thread
        (it connects there: the event loop goes on meanwhile). The thread cannot be
        stopped, but it ends by the call's deadline (``HINT_SECONDS`` without one), even
        when this caller is cancelled meanwhile."""
        if attempts.suspect is not None:
            details = attempts.suspect.details() or ""
            found = await asyncio.to_thread(self.connection_hint, details, attempts.deadline)
            attempts.asked(found)
        await asyncio.sleep(attempts.pause or 0.0)

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled (and not retried)."""
        self.closed = True
        await self.channel.close()

    async def __aenter__(self) -> AsyncHashmatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- Matcher ----------------------------------------------------------------------

    match_request = staticmethod(match_request)

    async def match(
        self,
        hashes: Iterable[shared.HashInput] = (),
        *,
        timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT,
        **options: Unpack[shared.MatchArgs],
    ) -> matcher_pb2.MatchResponse:
        """Look hashes and/or media up; options as :func:`match_request`; more than
        ``max_batch`` hashes as the sync client's ``match`` (several requests, one reply,
        ``timeout`` the whole call's deadline)."""
        plan = shared.MatchPlan(match_request(hashes, **options), self.max_batch)
        attempts = self._attempts(timeout, idempotent=True)
        replies = []
        for k, part in enumerate(plan.parts):
            with plan.sending(k):
                replies.append(await self._unary(self.matcher.Match, part, attempts.renewed()))
        return plan.merged(replies)

    async def match_stream(
        self,
        requests: Iterable[matcher_pb2.MatchRequest] | AsyncIterable[matcher_pb2.MatchRequest],
        *,
        timeout: shared.CallTimeout = None,
    ) -> AsyncIterator[matcher_pb2.MatchResponse]:
        """Bidirectional stream: one response per request, in order; split, retried and
        timed as the sync client's (a ``timeout`` for the whole stream, retries
        included; errors with ``results_delivered``). ``requests``: a plain or async
        iterable; what it raises is raised after the replies to the requests before
        it. Leaving the loop early (or cancelling it) cancels the stream."""
        attempts = shared.Attempts(
            self._timeout(timeout),
            self.retries,
            self.backoff,
            retry_cancelled=self._open,
            diagnose=True,
        )
        plan = shared.StreamPlan(self.max_batch, attempts)
        source = _guarded(requests, plan.reader)
        reading: list[asyncio.Future | None] = [None]  # the read in progress, shared

        async def read() -> None:
            """Read one request into ``plan``. Shielded: a failed attempt's stream,
            cancelled while it waits, must not cancel (and end) the caller's iterable;
            the next attempt waits for the same read."""
            pending = reading[0] or asyncio.ensure_future(_next(source))
            reading[0] = pending
            request = await asyncio.shield(pending)
            if reading[0] is pending:  # the first of the attempts waiting for it
                reading[0] = None
                plan.take(request)

        async def sent(attempt: int, seq: int) -> AsyncIterator[matcher_pb2.MatchRequest]:
            while plan.current(attempt):
                if (part := plan.part(seq)) is not None:
                    yield part
                    seq += 1
                elif plan.ended:
                    return
                else:
                    await read()

        replies = self._stream_replies(plan, sent)
        try:
            async for result in replies:
                yield result
        finally:
            await replies.aclose()  # cancels the call now, not once garbage collected
            if reading[0] is not None:
                reading[0].cancel()

    async def _stream_replies(
        self, plan: shared.StreamPlan, sent: Callable[[int, int], AsyncIterator[Any]]
    ) -> AsyncIterator[matcher_pb2.MatchResponse]:
        """The results of ``plan``'s streams, as the sync client's."""
        try:
            while not plan.done() or plan.attempt == 0:
                messages = sent(*plan.begin())
                with plan.attempts:
                    call = self.matcher.MatchStream(
                        messages, timeout=plan.attempts.left(), metadata=self.metadata
                    )
                    try:
                        while (reply := await _read(call)) is not None:
                            if (result := plan.answer(reply)) is not None:
                                yield result
                    finally:
                        call.cancel()  # nothing when it has ended
                    break
                await self._between(plan.attempts)
        except grpc.RpcError as exc:
            plan.failed(exc)
            raise
        plan.reader.raise_error(results_delivered=plan.delivered)

    async def hash(
        self,
        media: shared.MediaInput | Iterable[shared.MediaInput],
        signal_types: str | Sequence[str] = ("pdq",),
        *,
        timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT,
        **options: Any,
    ) -> matcher_pb2.HashResponse:
        """Hashes of ``media`` only, as the sync client's ``hash``; options
        (``dihedral``, ``trim_borders``) as
        :func:`~hashmatch.server.client_shared.hash_request`."""
        request = shared.hash_request(media, signal_types, **options)
        return await self._unary(self.matcher.Hash, request, timeout, idempotent=True)

    # -- Signals ----------------------------------------------------------------------

    async def ingest(
        self,
        list_name: str,
        signals: SignalSource,
        *,
        total: int | None = None,
        timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT,
        stop: asyncio.Event | None = None,
        stop_grace: float = shared.STOP_GRACE_SECONDS,
        **options: Any,
    ) -> signals_pb2.IngestResponse:
        """Stream ``signals`` into ``list_name``, ``batch_size`` signals a message: as
        :meth:`hashmatch.server.client.HashmatchClient.ingest`, with the same options
        (``source``, ``strict``, ``batch_size``, ``request_id``: see
        :class:`~hashmatch.server.client_shared.IngestPlan`), deadline, retries and
        ``signals_sent`` / ``signals_total`` on a failed call's error.

        ``signals``: a plain or async iterable, read whole first (a retry re-sends it),
        or a callable that returns a fresh plain or async iterable of the same signals
        each time (streamed, nothing held; called again for a retry; ``total`` as
        there). A plain iterable is read in the event loop: give an async one for a
        source that waits (a queue, a network read).

        ``stop``: an :class:`asyncio.Event` (a signal handler's, from
        ``loop.add_signal_handler``) that ends the call early and exactly, as the sync
        client's ``stop`` does: once it is set no further message is sent (not the one
        being filled either; a source waiting for its next signal is left at once), the
        stream is half-closed and the server's reply for what it got is returned (its
        counts are what is stored; ``stop.is_set()`` tells a stopped call). The reply
        is waited for ``stop_grace`` seconds at most; past that, or when the call fails
        after the stop (the server's details in the message) or the stop comes between
        attempts, it raises :class:`~hashmatch.server.client_shared.IngestStopped`,
        whose ``signals_sent`` is an upper bound. Why not cancelling the task: a
        cancelled call can only say how much was sent, not what the server stored.
        """
        if stop is not None and not isinstance(stop, asyncio.Event):
            raise TypeError(
                f"stop: an asyncio.Event, not {type(stop).__name__} (waiting on a"
                " threading.Event would block the event loop; HashmatchClient takes one)"
            )
        src = signals if callable(signals) else [item async for item in _items(signals)]
        plan = shared.IngestPlan(list_name, src, total, self.timeout, timeout=timeout, **options)

        async def messages(
            writes: _StoppableWrites | None = None,
        ) -> AsyncIterator[signals_pb2.IngestRequest]:
            batcher = plan.batcher()
            with plan.reader.reading():
                items = _items(plan.fresh())
                async for item in items if writes is None else writes.items(items):
                    if (message := batcher.add(item)) is not None:
                        yield message
                if writes is not None and writes.stop.is_set():
                    return  # not the message being filled either
                if (message := batcher.end()) is not None:
                    yield message

        with plan.reporting():
            if stop is None:
                call = plan.call(self.signals.Ingest, messages)
            else:
                call = self._stoppable_ingest(messages, stop, stop_grace)
            reply = await self._unary(call, None, plan.attempts(self.retries, self.backoff))
            return plan.checked(reply)

    def _stoppable_ingest(
        self,
        messages: Callable[[_StoppableWrites], AsyncIterator[Any]],
        stop: asyncio.Event,
        grace: float,
    ) -> Callable[..., Any]:
        """An ingest attempt for ``_unary`` that ``stop`` ends early (see ``ingest``)."""

        async def attempt(_request: None, *, timeout: float | None, metadata: Any) -> Any:
            if stop.is_set():  # during a retry's pause
                raise shared.stopped_between_attempts()
            writes = _StoppableWrites(stop)
            call = self.signals.Ingest(timeout=timeout, metadata=metadata)
            writes.start(call, messages(writes))
            return await _reply_unless_stopped(call, stop, grace, writes)

        return attempt

    async def retract(
        self, list_name: str, *, timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT, **targets: Any
    ) -> signals_pb2.RetractResponse:
        """As :meth:`hashmatch.server.client.HashmatchClient.retract` (``hashes``,
        ``signal_ids``, ``reason``, ``batch_size``, ``request_id``: see
        :func:`~hashmatch.server.client_shared.retract_requests`): one request after
        the other, ``timeout`` the whole call's deadline (as ``match``), the replies
        summed into one (a failed call's error has ``retracted_before``)."""
        total = signals_pb2.RetractResponse()
        attempts = self._attempts(timeout)
        with shared.retract_progress(total):
            for request in shared.retract_requests(list_name, **targets):
                reply = await self._unary(self.signals.Retract, request, attempts.renewed())
                shared.add_retract_reply(total, reply)
        return total

    async def list_hash_lists(
        self, *, timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT
    ) -> signals_pb2.ListHashListsResponse:
        request = signals_pb2.ListHashListsRequest()
        return await self._unary(self.signals.ListHashLists, request, timeout, idempotent=True)

    async def changes(
        self, since: int = 0, *, timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT, **options: Any
    ) -> AsyncIterator[signals_pb2.ChangesResponse]:
        """The change log after ``since``, as
        :meth:`hashmatch.server.client.HashmatchClient.changes` (``signal_types``,
        ``max_changes``): retried on UNAVAILABLE until the first message; resume a
        broken stream from the last ``head``."""
        request = shared.changes_request(since, **options)

        async def first(_request: None, *, timeout: float | None, metadata: Any) -> Any:
            stream = self.signals.Changes(request, timeout=timeout, metadata=metadata)
            return stream, await _read(stream)

        stream, message = await self._unary(first, None, timeout, idempotent=True)
        try:
            while message is not None:
                yield message
                message = await _read(stream)
        finally:
            stream.cancel()  # nothing when it has ended

    # -- Admin ------------------------------------------------------------------------

    async def stats(
        self, *, timeout: shared.CallTimeout = shared.CLIENT_TIMEOUT
    ) -> admin_pb2.StatsResponse:
        return await self._unary(
            self.admin.Stats, admin_pb2.StatsRequest(), timeout, idempotent=True
        )

    # -- health -----------------------------------------------------------------------

    async def health(
        self, service: str = "", *, timeout: float | None = shared.HEALTH_CHECK_SECONDS
    ) -> str:
        """``SERVING`` / ``NOT_SERVING`` / ... (no token needed)."""
        reply = await self.health_stub.Check(shared.health_request(service), timeout=timeout)
        return shared.health_status(reply)

    async def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Wait until health says SERVING (the index is loaded); TimeoutError after
        ``timeout``. A certificate the client cannot verify, or a TLS setup the server
        refuses, fails at once (ConnectionError), as the sync client's."""
        deadline = time.monotonic() + timeout
        found = None  # the server asked, once, about a connection it hung up on
        while True:
            try:
                last = await self.health(timeout=shared.health_check_timeout(deadline))
            except grpc.RpcError as exc:
                if found is None and shared.hung_up_while_connecting(exc):
                    details = exc.details() or ""
                    found = await asyncio.to_thread(self.connection_hint, details, deadline)
                last = shared.health_failure(exc, found)
            if last == "SERVING":
                return
            if time.monotonic() > deadline:
                raise shared.not_serving(timeout, last)
            await asyncio.sleep(shared.HEALTH_POLL_SECONDS)
