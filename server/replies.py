"""Replies of write calls remembered by ``request_id``, so a retried write reports what
the first attempt did.

Why: Ingest and Retract are idempotent, and the clients retry them on UNAVAILABLE. When
the first attempt was applied and only its reply was lost (the connection dropped
before it arrived), the retry was applied afresh and reported its own counts: "retracted
0", everything "unchanged", and the pipeline logged that nothing had happened. A write
that carries a ``request_id`` the same tenant used for the same method within
RETENTION_SECONDS is not applied again: it gets the first call's reply. The same id with
other content is the caller's mistake (INVALID_ARGUMENT naming ``request_id``), except a
stream that begins with the first call's messages and goes on: the first was cut after
them (see :meth:`WriteReplies.once`), and the rest is applied; a repeat
that arrives while the first still runs waits for it (bounded by its own deadline), so
the two never run side by side and the repeat still gets the first's counts.

In memory, bounded (MAX_REPLIES, MAX_REPLY_BYTES): a restart forgets them. That is
acceptable because the store is the truth: a retry that reaches a restarted server is
applied again as a no-op (the old counts, "unchanged" / "retracted 0", for that rare
case), never twice. Only calls that succeeded are remembered: a failed one changed
nothing the client was told about, and its retry runs again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from hashmatch.engine.errors import InvalidInput
from hashmatch.server.errors import clip

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from hashmatch.server.calls import Call

RETENTION_SECONDS = 600.0
MAX_REPLIES = 10_000
MAX_REPLY_BYTES = 64 * 1024 * 1024  # all remembered replies together
MAX_REQUEST_ID_CHARS = 128
WAIT_SLICE_SECONDS = 0.05  # a waiting repeat re-checks its own deadline this often

Reply = TypeVar("Reply", bound="Message")
Key = tuple[str, str, str]  # (tenant, method, request_id)


class RequestBody(Iterator["Message"]):
    """A call's request messages (one for a unary call), digested as they are read, so
    a repeated ``request_id`` can be checked to carry the same request. The id itself is
    left out of the digest: a stream may set it on its first message only."""

    def __init__(self, requests: Iterable[Message], *, stream: bool):
        self._requests = iter(requests)
        self._hash = hashlib.sha256()
        self.read = 0  # messages handed out so far
        self._next = next(self._requests, None)  # read ahead: the first, for its id
        self._ended = self._next is None
        self._expected: tuple[bytes, int, Callable[[], Exception]] | None = None
        self.request_id = self._next.request_id if self._next is not None else ""
        self.field = "stream[0].request_id" if stream else "request_id"

    def __next__(self) -> Message:
        if self._next is not None:
            message, self._next = self._next, None
        elif self._ended:
            message = None  # (not asked of the request stream again)
        else:
            message = next(self._requests, None)
            self._ended = message is None
        if self._expected is not None and (message is None or self.read == self._expected[1]):
            self._check_expected()  # at the end, or before the first message past them
        if message is None:
            raise StopIteration
        self._add(message)
        return message

    def expect(self, digest: bytes, messages: int, mismatch: Callable[[], Exception]) -> None:
        """The body must begin with ``messages`` messages of ``digest`` (a remembered
        call's): checked, raising ``mismatch()``, once they are read, before any message
        past them is handed out, or at the end of a shorter body."""
        self._expected = (digest, messages, mismatch)

    def _check_expected(self) -> None:
        digest, _messages, mismatch = self._expected
        self._expected = None
        if self._hash.digest() != digest:
            raise mismatch()

    def _add(self, message: Message) -> None:
        given = message.request_id
        if given and given != self.request_id:
            raise InvalidInput(
                "differs from the first message's request_id (set it there, or the same on"
                " every message)",
                field=f"stream[{self.read}].request_id",  # (a unary call has one message)
            )
        self.read += 1
        if not self.request_id:
            return  # nothing to compare with: no digest
        message.request_id = ""  # restored below: the digest is of the content
        data = message.SerializeToString(deterministic=True)
        message.request_id = given
        self._hash.update(len(data).to_bytes(8, "big"))
        self._hash.update(data)

    def digest(self, check: Callable[[], None] | None = None) -> bytes:
        """The whole body's digest: reads what the handler did not, calling ``check``
        (the call's deadline) per message."""
        for _message in self:
            if check is not None:
                check()
        return self._hash.digest()


@dataclass(frozen=True)
class _Done:
    digest: bytes
    messages: int  # how many request messages the call read (the digest's)
    kind: type
    reply: bytes
    at: float


class WriteReplies:
    """The remembered replies of one server (see the module doc). Thread-safe."""

    def __init__(
        self,
        retention: float = RETENTION_SECONDS,
        max_replies: int = MAX_REPLIES,
        max_bytes: int = MAX_REPLY_BYTES,
    ):
        self.retention, self.max_replies, self.max_bytes = retention, max_replies, max_bytes
        self._done: OrderedDict[Key, _Done] = OrderedDict()  # oldest first
        self._running: set[Key] = set()
        self._bytes = 0
        self._held: dict[str, list[int]] = {}  # tenant -> [replies, bytes] remembered
        self._changed = threading.Condition()
        self.waiting = 0  # repeats waiting for their first call now (read by tests)

    def once(
        self, call: Call, body: RequestBody, run: Callable[[Reply | None, int], Reply]
    ) -> Reply:
        """``run(None, 0)``'s reply, remembered under the body's ``request_id``.

        For an id already answered, ``run(that reply, n)``: it must not apply the
        body's first ``n`` messages (the first call did; the body checks they are the
        same) and adds what any further messages do to that reply. Why further
        messages: grpcio can end a stream its client cut (cancelled, connection
        dropped) as if the client had closed it, so the first call's reply may answer
        for the stream's first messages only; the client's retry sends them all."""
        if not body.request_id:
            return run(None, 0)
        if len(body.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidInput(
                f"{len(body.request_id)} characters is over the limit of {MAX_REQUEST_ID_CHARS}",
                field=body.field,
            )
        call.log["request_id"] = clip(body.request_id)
        key = (call.principal.tenant, call.method, body.request_id)
        done = self._claim(key, call)
        start, skip, remember = None, 0, None
        try:
            if done is not None:
                start, skip = done.kind.FromString(done.reply), done.messages
                body.expect(done.digest, skip, lambda: self._other_content(body, call))
            reply = run(start, skip)
            # no deadline check: the write is done, and a client gone by now (its reply
            # lost) is the very one whose retry must find it
            digest = body.digest()
            if body.read == skip:
                call.log["replayed"] = True
            else:
                if skip:
                    call.log["continued"] = skip
                data = reply.SerializeToString()
                remember = _Done(digest, body.read, type(reply), data, time.monotonic())
            return reply
        finally:
            self._release(key, remember)

    def _claim(self, key: Key, call: Call) -> _Done | None:
        """Mark ``key`` running (this call's to run or replay, :meth:`_release` it), and
        return its finished call's entry if any. Waits while another call with the key
        runs."""
        with self._changed:
            while key in self._running:
                self.waiting += 1
                try:
                    self._changed.wait(WAIT_SLICE_SECONDS)
                finally:
                    self.waiting -= 1
                call.check_deadline()
            self._expire()
            self._running.add(key)
            return self._done.get(key)

    def _release(self, key: Key, done: _Done | None) -> None:
        """``key`` no longer running; ``done`` (a call that applied something and
        succeeded) remembered in place of the key's entry, if it fits."""
        with self._changed:
            self._running.discard(key)
            if done is not None and key in self._done:
                self._forget(key)
            if done is not None and len(done.reply) <= self.max_bytes:
                self._done[key] = done
                self._count(key[0], done, +1)
                while len(self._done) > self.max_replies or self._bytes > self.max_bytes:
                    self._forget(self._evictee())
            self._changed.notify_all()

    def _evictee(self) -> Key:
        """The oldest reply of the tenant that holds the most of the limit passed.

        Why not the oldest of all: the limits are shared, and one tenant's burst of ids
        (or a few replies with long rejection lists) would push out every other
        tenant's replies, whose retries would then report "unchanged" / 0 again.
        """
        by = 0 if len(self._done) > self.max_replies else 1
        heaviest = max(self._held, key=lambda tenant: self._held[tenant][by])
        return next(key for key in self._done if key[0] == heaviest)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.retention
        while self._done and next(iter(self._done.values())).at < cutoff:
            self._forget(next(iter(self._done)))

    def _forget(self, key: Key) -> None:
        self._count(key[0], self._done.pop(key), -1)

    def _count(self, tenant: str, done: _Done, sign: int) -> None:
        held = self._held.setdefault(tenant, [0, 0])
        held[0] += sign
        held[1] += sign * len(done.reply)
        self._bytes += sign * len(done.reply)
        if not held[0]:
            del self._held[tenant]

    def _other_content(self, body: RequestBody, call: Call) -> InvalidInput:
        return InvalidInput(
            f"{body.request_id!r} was given to another {call.method} request with"
            f" different content less than {self.retention / 60:g} minutes ago; use a"
            " new request_id for a new request",
            field=body.field,
        )
