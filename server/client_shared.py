"""What the two Python clients share: connecting, building requests, when to retry,
ingest's messages, health's verdicts.

Why: :class:`hashmatch.server.client.HashmatchClient` (threads) and
:class:`hashmatch.server.aio_client.AsyncHashmatchClient` (asyncio) must behave alike:
the same constructor arguments, requests, retries, ingest batching and error
annotations. Only the waiting differs (``time.sleep`` vs ``await``), so everything
else is here, once.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import random
import re
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypedDict

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from hashmatch.server.certificates import (
    refuses_client_certificate,
    requires_client_certificate,
    speaks_tls,
)
from hashmatch.server.client_tls import check_client_tls, source_of
from hashmatch.v1 import (
    admin_pb2_grpc,
    common_pb2,
    matcher_pb2,
    matcher_pb2_grpc,
    signals_pb2,
    signals_pb2_grpc,
)

HashInput = common_pb2.HashValue | tuple[str, str | bytes]
#: Media bytes as the clients take them: a bytearray or memoryview (a buffer an upload
#: was read into) is sent as its bytes
MediaInput = bytes | bytearray | memoryview
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# What grpcio says of a call the client cancelled itself (its own cancel, or its channel
# closed under the call): such a CANCELLED is never retried.
LOCAL_CANCEL_DETAILS = frozenset({"Locally cancelled by application!", "Channel closed!"})
#: gRPC's words for a call that never reached the server (refused, no route)
CONNECT_FAILED = "failed to connect"
MAX_BACKOFF = 2.0  # seconds between retries at most
MIN_ATTEMPT_SECONDS = 0.05  # a retry is only worth making with this much time left
MAX_NOT_FOUND_LISTED = 1000  # RetractResponse.not_found lists this many (the server uses it)
# Hashes (and video frames) per Match request: the server's default max_batch, which it
# does not advertise; a server set lower needs the client's ``max_batch`` set to match
MAX_BATCH = 10_000
KEEPALIVE_SECONDS = 30.0  # between pings (the server allows down to 10 s by default)
KEEPALIVE_TIMEOUT_SECONDS = 20.0  # an unanswered ping: the connection is dead
# An ingest message is sent once it holds this many bytes, even short of batch_size: a
# quarter of the server's default max_message_bytes (1000 PDQ signals are ~0.1 MB, 1000
# ten-minute vPDQ videos ~43 MB, which the server refused whole)
MAX_INGEST_MESSAGE_BYTES = 8 * 1024 * 1024


# -- deadlines --------------------------------------------------------------------------


class ClientTimeout(enum.Enum):
    """The type of :data:`CLIENT_TIMEOUT`, the default of a call's ``timeout``."""

    CLIENT = "the client's timeout"

    def __repr__(self) -> str:
        return "CLIENT_TIMEOUT"


#: A call's ``timeout`` when none is given: the client's own (its constructor's
#: ``timeout``, 30 s by default). Why a sentinel: with None as the default, an explicit
#: ``timeout=None`` meant the client's timeout too, and a single call could not be given
#: no deadline (a long ``changes`` read, a big ``retract``) without a second client.
CLIENT_TIMEOUT: Final = ClientTimeout.CLIENT
#: A call's ``timeout``: seconds, None for no deadline (retried up to ``retries`` times,
#: as a client made with ``timeout=None``), or CLIENT_TIMEOUT for the client's
CallTimeout = float | ClientTimeout | None


def call_timeout(timeout: CallTimeout, client_timeout: float | None) -> float | None:
    """A call's deadline in seconds from now (None: none) for its ``timeout``."""
    return client_timeout if isinstance(timeout, ClientTimeout) else timeout


# -- connecting -------------------------------------------------------------------------


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


class PlaintextTokenWarning(UserWarning):
    """A bearer token sent without TLS to an address off this machine."""


def local_target(target: str) -> bool:
    """Whether the gRPC ``target`` is this machine: a unix socket, ``localhost``, an
    address in 127.0.0.0/8 or ::1 (every one of an ``ipv4:``/``ipv6:`` list). Anything
    else, a DNS name included, may be reached over a network."""
    addresses = target_addresses(target)
    return addresses is None or all(_loopback(_host(address)) for address in addresses)


def target_addresses(target: str) -> list[str] | None:
    """The ``host[:port]`` addresses a gRPC ``target`` names (``dns:[//authority/]``,
    ``ipv4:``/``ipv6:`` lists, or a bare ``host[:port]``); None for a unix socket. One
    reading of a target for the plaintext-token warning and the TLS checks, which
    connect there themselves (they parsed ``dns:HOST:PORT`` as a host ``dns:HOST``)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return None
    scheme, colon, rest = target.partition(":")
    if colon and scheme in ("ipv4", "ipv6"):
        return rest.split(",")
    if colon and scheme == "dns":  # dns:[//authority/]host[:port]
        return [rest[2:].partition("/")[2] if rest.startswith("//") else rest]
    return [target]


def _host(address: str) -> str:
    """The host of ``host[:port]``, ``[v6]:port`` or a bare IPv6 address."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address if address.count(":") > 1 else address.partition(":")[0]


def _loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def warn_plaintext_token(target: str, stacklevel: int = 1) -> None:
    """Warn that the token goes to ``target`` unencrypted, unless it stays on this
    machine (``stacklevel``: as ``warnings.warn``'s, from the caller of this). Why: a
    client given a token and no TLS setting sent it in the clear to any address,
    silently; whoever reads the traffic can call the server as that tenant."""
    if local_target(target):
        return
    warnings.warn(
        f"the token is sent to {target} without TLS: anyone on the network path can read"
        " and reuse it (use TLS: tls=True or root_certificates=, `remote --tls [--ca]`;"
        " or connect over localhost or a unix socket)",
        PlaintextTokenWarning,
        stacklevel=stacklevel + 1,
    )


def reconnect_options(backoff: float) -> list[tuple[str, int]]:
    """The channel's own reconnect schedule, kept to the retries' (``backoff`` doubling
    to at most MAX_BACKOFF).

    Why: gRPC reconnects a channel whose server went away on its own backoff (1 s growing
    1.6x to 120 s), and until that attempt every call fails at once with UNAVAILABLE,
    retried or not. After a 15 s outage (a drain plus a restart) the channel's next try
    was ~13 s after the server was back, so calls with the default 30 s deadline failed
    against a server that was serving.
    """
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, int(min(backoff, MAX_BACKOFF) * 1000))),
        ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000)),
    ]


def keepalive_options(keepalive: float | None, timeout: float) -> list[tuple[str, int]]:
    """Pings every ``keepalive`` seconds (None = none), the connection dropped when one
    is not answered within ``timeout``: even on an idle channel, and without limit on
    pings while no data flows (gRPC's default stops after 2).

    Why: a network that silently drops a connection (a NAT or firewall timing it out, a
    peer that vanished) sends nothing back, so a ``match_stream`` with no deadline
    waited forever for its next reply. The server accepts pings this often only down to
    its ``min_client_ping_seconds`` (10 s by default); more often, it closes the
    connection ("too many pings").
    """
    if keepalive is None or keepalive == 0:  # 0: off, as the server's keepalive_seconds
        return []
    for name, value in (("keepalive", keepalive), ("keepalive_timeout", timeout)):
        # (keepalive=0 used to ping every millisecond: the server closed the connection
        # "too many pings"; inf raised OverflowError from int())
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    return [
        ("grpc.keepalive_time_ms", max(1, int(keepalive * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, int(timeout * 1000))),
        # a keepalive joins a ping already in flight (gRPC's own, e.g. flow control's),
        # which waits this long, 60 s by default, instead
        ("grpc.http2.ping_timeout_ms", max(1, int(timeout * 1000))),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class ClientBase:
    """One server's channel, stubs, token metadata and retry settings, for either
    client: ``channels`` is the module that opens channels (``grpc`` or ``grpc.aio``,
    whose ``secure_channel`` / ``insecure_channel`` take the same arguments).

    ``root_certificates``, ``client_cert``, ``client_key``: PEM bytes, PEM text (a str
    starting ``-----BEGIN``) or a file path; any of them, or ``tls=True`` alone (the
    system's root CAs), makes the channel TLS, else it is plaintext (the token too).
    ``server_name``: the name the server's certificate is checked for, instead of the
    host in ``target``. ``timeout``: seconds per call (None = no deadline); ``retries``:
    how often a call without a deadline retries UNAVAILABLE (a call with one retries
    until it; ``retries=0``: never); ``backoff``: the first pause, doubling to 2 s.
    ``max_message_bytes``: the largest message sent or received.
    ``max_batch``: the server's ``max_batch`` (hashes, or video frames, per Match):
    ``match`` sends more as several requests and merges their replies. ``keepalive``:
    seconds between pings that find a connection the network dropped silently (None =
    off; at least the server's ``min_client_ping_seconds``), ``keepalive_timeout``: how
    long an unanswered ping waits before the connection is given up (its calls fail
    UNAVAILABLE).

    A ``token`` for a plaintext channel to an address off this machine is warned about
    once, here (:class:`PlaintextTokenWarning`). A call that never connected because
    the server refuses this TLS setup raises at once, its error's ``connection_hint``
    saying what is wrong (:meth:`connection_hint`).
    """

    channels: Any = grpc

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
        max_batch: int = MAX_BATCH,
        keepalive: float | None = KEEPALIVE_SECONDS,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT_SECONDS,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *reconnect_options(backoff),
            *keepalive_options(keepalive, keepalive_timeout),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if bool(client_cert) != bool(client_key):
            # grpcio aborts the whole process (a failed C++ CHECK, SIGABRT) on a client
            # certificate without its key; a key alone would silently be ignored
            raise ValueError("client_cert and client_key go together (mutual TLS): give both")
        token = _clean_token(token)
        target = grpc_target(target)
        self._check_context()
        self.target = target
        self.tls = bool(tls or root_certificates or client_cert)
        self.server_name = server_name  # the name gRPC checks the certificate for
        self.root_certificates = _read(root_certificates)  # for certificate_hint
        # for connection_hint's check of what the server makes of them
        self._client_chain = (_read(client_cert), _read(client_key)) if client_cert else None
        given = {"root_certificates": root_certificates, "client_cert": client_cert}
        given["client_key"] = client_key
        check_client_tls(  # gRPC would only fail "Failed to create security handshaker"
            self.root_certificates,
            self._client_chain,  # type: ignore[arg-type]
            {argument: source_of(value) for argument, value in given.items()},
        )
        if self.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.root_certificates,
                private_key=self._client_chain and self._client_chain[1],
                certificate_chain=self._client_chain and self._client_chain[0],
            )
            self.channel = self.channels.secure_channel(target, creds, options=options)
        else:
            self.channel = self.channels.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if token and not self.tls:
            warn_plaintext_token(target, stacklevel=2)  # the line that made the client
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_batch = max_batch
        self.closed = False  # set by close(): a call it cancelled is not retried
        self.matcher = matcher_pb2_grpc.MatcherStub(self.channel)
        self.signals = signals_pb2_grpc.SignalsStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def _check_context(self) -> None:
        """Refuse a place the channel could not be used from (the sync client: none)."""

    def _timeout(self, timeout: CallTimeout) -> float | None:
        """A call's ``timeout`` in seconds (None: no deadline); CLIENT_TIMEOUT: the
        client's."""
        return call_timeout(timeout, self.timeout)

    def _attempts(self, timeout: CallTimeout, *, idempotent: bool = False) -> Attempts:
        """The retry schedule of one call (``timeout``: see :data:`CallTimeout`).
        ``idempotent``: a read, safe to repeat: a CANCELLED it did not cause is
        retried too (``Attempts.retry_cancelled``)."""
        retry_cancelled = self._open if idempotent else None
        return Attempts(
            self._timeout(timeout),
            self.retries,
            self.backoff,
            retry_cancelled=retry_cancelled,
            diagnose=True,
        )

    def _open(self) -> bool:
        return not self.closed

    def connection_hint(self, details: str, deadline: float | None = None) -> tuple[str, bool]:
        """What is likely wrong with this client's TLS setup when a call never
        connected (``details``: gRPC's words), and whether that is certain; ("",
        False) when nothing points at it (a server that is down).

        Where gRPC's words cannot tell (a mutual-TLS server refusing this client's
        certificate and a plaintext client hung up on by a TLS server both read
        "Socket closed", as a server going away does; ``localhost`` names only its
        last address's error), the server is asked: it connects there, so it blocks,
        until ``deadline`` (monotonic: the call's) at most, and :data:`HINT_SECONDS`
        without one. This client's certificate is offered only over TLS 1.3 to a server
        whose certificate verifies (``refuses_client_certificate``). One mechanism for
        both clients and the CLI's ``remote`` verbs, which printed these hints alone."""
        if CONNECT_FAILED not in details:  # it connected: nothing to ask the server
            return tls_hint(details), False
        most = time.monotonic() + HINT_SECONDS
        deadline = most if deadline is None else min(deadline, most)
        address = tcp_address(self.target)
        if address is not None and SOCKET_CLOSED in details:
            if not self.tls and speaks_tls(*address, deadline):
                return PLAIN_TO_TLS_HINT, True
            if self.tls and requires_client_certificate(*address, deadline):
                if self._client_chain is None:
                    return NO_CERTIFICATE_HINT, True
                if self._refuses_chain(*address, deadline):
                    return CERTIFICATE_REFUSED_HINT, True
        if self.tls and (
            found := certificate_hint(
                self.target,
                roots=self.root_certificates,
                deadline=deadline,
                server_name=self.server_name,
            )
        ):
            return found, True
        return tls_hint(details) or no_port_hint(self.target), handshake_refused(details)

    def _refuses_chain(self, host: str, port: int, deadline: float) -> bool:
        """Whether the server refuses this client's certificate (see
        ``refuses_client_certificate``). The files live in a private temporary directory
        for the moment of the check: ``ssl`` loads a certificate and key from files
        only."""
        assert self._client_chain is not None
        try:
            with tempfile.TemporaryDirectory() as folder:  # mode 0700: the key stays private
                files = (Path(folder, "cert.pem"), Path(folder, "key.pem"))
                for path, pem in zip(files, self._client_chain, strict=True):
                    path.write_bytes(pem or b"")
                return refuses_client_certificate(
                    host,
                    port,
                    (str(files[0]), str(files[1])),
                    roots=self.root_certificates,
                    server_name=self.server_name,
                    deadline=deadline,
                )
        except OSError:  # no room for them: the call's own error stands, unexplained
            return False


# -- retrying ---------------------------------------------------------------------------


class Attempts:
    """The deadline and retry pauses of one call. Each attempt runs in ``with attempts:``,
    which lets through what is worth retrying (and sets ``pause``) and raises the rest::

        attempts = Attempts(timeout, retries, backoff)
        while True:
            with attempts:
                return method(request, timeout=attempts.left())
            time.sleep(attempts.pause)  # or: await asyncio.sleep(attempts.pause)

    Why: a server restart or an index load (millions of signals) is UNAVAILABLE for
    seconds, longer than a fixed few retries last; a call with a deadline rides it out
    until the deadline (the caller said how long it can wait), one without keeps to
    ``retries`` attempts so it cannot hang. ``retries=0`` never retries. The pause is
    jittered so clients restarted together do not retry in lockstep. Both clients loop
    this way, so they retry alike.

    A RetryInfo delay is the least pause: a retry sooner is refused again, so when
    the deadline leaves less the refusal is raised at once (not after waiting out the
    deadline for one more refusal).

    ``retry_window``: retry for at most this long after the first failure, even when
    the deadline is later (an ingest's deadline grows with its size; a dead server
    should not be retried for hours), or when there is none (an ingest of unknown
    length).

    ``retry_cancelled``: for a call that is safe to repeat (a read), a CANCELLED the
    client did not cause is retried as UNAVAILABLE is, while this says so (the client is
    not closed). Why: a server that begins to stop cancels the calls that reach it in
    that moment, before any handler runs (grpc core; no drain setting changes it): the
    client saw CANCELLED, which was not retried, and ``scan --server`` failed at once
    "matching failed (CANCELLED)" where the rest of the restart was ridden out.
    """

    def __init__(
        self,
        timeout: float | None,
        retries: int,
        backoff: float,
        retry_window: float | None = None,
        retry_cancelled: Callable[[], bool] | None = None,
        diagnose: bool = False,
    ):
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.retry_until = self.deadline
        self.retries = retries
        self.retry_window = retry_window
        self.retry_cancelled = retry_cancelled
        self.backoff = backoff
        self.delay = min(backoff, MAX_BACKOFF)  # the first pause too: 'at most 2 s'
        self.attempt = 0
        self.pause: float | None = 0.0
        self.diagnose = diagnose
        self.suspect: grpc.RpcError | None = None  # a failure to connect to ask about
        self.hint: str | None = None  # what asking found (None: not asked yet)

    def renewed(self) -> Attempts:
        """A fresh schedule (no failure yet, first pause again) with the same deadline.

        Why: a caller's ``timeout`` is the whole call's budget, however many requests
        it takes (the parts of a split ``match``), and a long ``match_stream`` that got
        replies since its last failure has not been failing ``retries`` times in a row.
        """
        fresh = Attempts(
            None,
            self.retries,
            self.backoff,
            self.retry_window,
            self.retry_cancelled,
            diagnose=self.diagnose,
        )
        fresh.deadline = fresh.retry_until = self.deadline
        return fresh

    def left(self) -> float | None:
        """Seconds the next attempt may take (None = no deadline)."""
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.001)

    def __enter__(self) -> Attempts:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, _tb: object) -> bool:
        """True (the error is swallowed, ``pause`` set) when ``exc`` is worth a retry."""
        if not isinstance(exc, grpc.RpcError):
            return False
        if self.attempt == 0 and self.retry_window is not None:
            window_end = time.monotonic() + self.retry_window
            self.retry_until = (
                window_end if self.deadline is None else min(self.deadline, window_end)
            )
        pause = self._pause(exc)
        self.attempt += 1
        self.delay = min(self.delay * 2, MAX_BACKOFF)
        if self.diagnose and self.hint is None and _worth_asking(exc, pause):
            self.suspect, self.pause = exc, pause  # the client asks, then goes on or raises
            return True
        if pause is None:
            if never_connected(exc):
                explain(exc, self.hint or tls_hint(exc.details() or ""))
            return False
        self.pause = pause
        return True

    def asked(self, found: tuple[str, bool]) -> None:
        """The client asked the server about :attr:`suspect` (``found``: its
        ``connection_hint``): raise it, explained, when the hint is certain or no retry
        is left (``pause`` None); else the retries go on (without asking again).

        Why: a TLS setup the server refuses was retried as a server that is down, for
        the call's whole deadline (30 s by default), and said "UNAVAILABLE: ... Socket
        closed"; only the CLI added a hint."""
        exc, self.suspect = self.suspect, None
        if exc is None:
            return
        hint, certain = found
        self.hint = hint
        if certain or self.pause is None:
            explain(exc, hint or tls_hint(exc.details() or ""))
            raise exc

    def _pause(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before retrying ``exc``, or None to raise it."""
        lost = lost_status(exc)
        cancelled = (
            self.retry_cancelled is not None and cancelled_elsewhere(exc) and self.retry_cancelled()
        )
        least = 0.0 if exc.code() in RETRYABLE or lost or cancelled else retry_delay(exc)
        if handshake_refused(getattr(exc, "details", lambda: "")() or ""):
            # UNAVAILABLE, but waiting changes nothing (as health_failure says): a remote
            # verb spent its whole --timeout, 30 s, on a certificate it could not verify
            return None
        if least is None or self.retries <= 0:
            return None
        pause = max(self.delay * (1 + random.uniform(0, 0.1)), least)
        if self.retry_until is None or lost:  # a lost status may be a final one: a few tries
            if self.attempt >= self.retries:
                return None
            if self.retry_until is None:
                return pause
        # leave the last attempt time to get an answer: else it ends DEADLINE_EXCEEDED
        # and hides that the server was unavailable throughout
        room = self.retry_until - time.monotonic() - MIN_ATTEMPT_SECONDS
        if room < least:  # the server asked for a longer wait than the deadline leaves
            return None
        pause = min(pause, room)
        return pause if pause > 0 else None


def cancelled_elsewhere(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` is a CANCELLED this client did not cause (a stopping server's, or
    a proxy's): grpcio words its own cancels so (:data:`LOCAL_CANCEL_DETAILS`)."""
    if exc.code() is not grpc.StatusCode.CANCELLED:
        return False
    return (getattr(exc, "details", lambda: "")() or "") not in LOCAL_CANCEL_DETAILS


def retry_delay(exc: grpc.RpcError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay of a RESOURCE_EXHAUSTED status, None without
    one: the server marks a momentary overload so (request-stream slots, media or lookup
    queues full), not a full disk or a reply over the limit, which would fail again."""
    if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details that do not agree with the code
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def lost_status(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` is grpc.aio's INTERNAL "Internal error from Core" for a request
    it was writing when the server ended the stream: it overwrites the server's status
    with this one (grpc/grpc#36066), so a stream refused for a busy slot (a
    RESOURCE_EXHAUSTED the clients retry) or a bad request cannot be told apart.

    Why: the asyncio client's ``match_stream`` and ``ingest`` start writing before the
    server has accepted the stream; their refusals surfaced as INTERNAL about half the
    time. Retried up to ``retries`` times even with a deadline: a final status lost so
    is then raised (as this INTERNAL) after a few quick tries."""
    details = exc.details() if exc.code() is grpc.StatusCode.INTERNAL else ""
    debug = getattr(exc, "debug_error_string", lambda: "")()
    return details == "Internal error from Core" and "SendMessageOperation" in debug


#: how long asking the server what is wrong (``connection_hint``) takes at most for a
#: call without a deadline (one with a deadline: until it)
HINT_SECONDS = 5.0
HOSTNAME_MISMATCH = "Hostname Verification Check failed"  # gRPC's words for it
#: gRPC's words for a connection the server hung up on while it was being set up: a TLS
#: server hanging up on a plaintext client, a mutual-TLS one refusing the client's
#: certificate, or a server (or proxy) going away; only asking the server tells which
SOCKET_CLOSED = "Socket closed"
PLAIN_TO_TLS_HINT = (
    " (the server speaks TLS and this client connected without it: give tls=True and"
    " root_certificates=its CA, `remote --tls --ca CA.pem`; for mutual TLS also"
    " client_cert= and client_key=, `--cert` and `--key`)"
)
NO_CERTIFICATE_HINT = (
    " (the server requires a client certificate (mutual TLS) and this client gave none:"
    " give client_cert= and client_key=, `remote --cert CERT.pem --key KEY.pem`, a"
    " certificate signed by the CA the server trusts for clients, its tls_client_ca)"
)
CERTIFICATE_REFUSED_HINT = (
    " (the server refused this client's certificate (mutual TLS): it is not signed by"
    " the CA the server trusts for clients, its tls_client_ca, or is out of its dates;"
    " give one that is, client_cert= and client_key=, `remote --cert --key`)"
)


def never_connected(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` is a call that never reached the server (no connection came up)."""
    code = getattr(exc, "code", lambda: None)()
    return code is grpc.StatusCode.UNAVAILABLE and CONNECT_FAILED in (exc.details() or "")


def hung_up_while_connecting(exc: grpc.RpcError) -> bool:
    """Whether the server hung up on ``exc``'s connection while it was being set up: a
    TLS setup it refuses, or a server going away (see :data:`SOCKET_CLOSED`)."""
    return never_connected(exc) and SOCKET_CLOSED in (exc.details() or "")


def _worth_asking(exc: grpc.RpcError, pause: float | None) -> bool:
    """Whether the server should be asked what is wrong before going on: a connection it
    hung up on while being set up (which retries would repeat if it is a TLS refusal), or
    a failure to connect that will be raised (its hint may need the server's word)."""
    return hung_up_while_connecting(exc) or (pause is None and never_connected(exc))


def explain(exc: grpc.RpcError, hint: str) -> None:
    """Give ``exc`` its ``connection_hint`` (what is likely wrong; "" when nothing is
    known) and, when there is one, a note saying it (shown with the traceback)."""
    exc.connection_hint = hint  # type: ignore[attr-defined]
    if hint:
        exc.add_note(hint.strip().removeprefix("(").removesuffix(")"))


def handshake_refused(details: str) -> bool:
    """Whether gRPC's ``details`` say the TLS handshake itself failed on OpenSSL's
    verdict (a certificate that does not verify, a plaintext server answering a TLS
    client: WRONG_VERSION_NUMBER): no retry or wait changes that. Not "Socket closed"
    (see :data:`SOCKET_CLOSED`), nor a handshake cut by the network (SSL_ERROR_SYSCALL)."""
    ssl_verdict = "andshake failed" in details and "SSL_ERROR_SSL" in details
    return ssl_verdict or certificate_refused(details)


def certificate_refused(details: str) -> bool:
    """Whether a call failed on the server's certificate (its CA, its dates, or a host it
    does not name): UNAVAILABLE, but no retry or wait changes it. One test for the
    retries and the health wait: the retries checked the CA only, and a certificate for
    another host was retried until the call's deadline (30 s for a remote verb)."""
    return "CERTIFICATE_VERIFY_FAILED" in details or HOSTNAME_MISMATCH in details


def tls_hint(details: str) -> str:
    """A hint for errors that are a TLS mismatch, not a server that is down: gRPC words
    them as UNAVAILABLE ("Socket closed", a failed handshake), which reads like one.
    Empty for anything else.

    "Socket closed" is a TLS mismatch only while connecting ("failed to connect to all
    addresses; ... Socket closed": a TLS server hangs up on a plain client's HTTP/2
    preface). A connection that was up and then cut (a server restart, a proxy or load
    balancer dropping it) is "Stream removed (Socket closed)": no TLS question there,
    and the hint sent people looking at their certificates."""
    if "CERTIFICATE_VERIFY_FAILED" in details and "has expired" in details:
        return (
            " (the server's certificate has expired: the server must renew it; `hashmatch"
            " serve` reloads it on SIGHUP)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            " (the server's certificate is not signed by a CA this client trusts: give its"
            " CA with --ca)"
        )
    if HOSTNAME_MISMATCH in details:
        return (
            " (the server's certificate does not name the host connected to: connect by a"
            " name or address in its subjectAltName, or give the client that name as"
            " server_name, `remote --server-name NAME`)"
        )
    never_connected = "Socket closed" in details and "failed to connect" in details
    if never_connected or "andshake" in details or "WRONG_VERSION" in details:
        return (
            " (a TLS mismatch? a TLS server needs --tls [--ca CA.pem], mutual TLS also"
            " --cert and --key; a plain server, no --tls)"
        )
    return ""


#: URL schemes people write for a gRPC server, none a gRPC target's (``dns:``, ``unix:``)
_URL_SCHEMES = re.compile(r"^(https?|grpcs?)://", re.IGNORECASE)


def grpc_target(target: str) -> str:
    """``target`` without surrounding whitespace (a value read from a file or a secret
    store ends in a newline), refused (ValueError) when it is a URL or its port is not a
    number.

    Why: gRPC took ``http://host:50051`` (and ``grpc://``, a trailing ``/``) as a host
    name that does not resolve, and the clients retried "errors resolving ...:
    Misformatted domain name" as a server that is down until the call's deadline (30 s
    by default); a target with a space failed the same way, and so did a port that is
    not a number (``host:50051/``, a URL's scheme dropped but not its slash): refused
    (ValueError) too, saying the ``HOST:PORT`` to give."""
    target = target.strip()
    if found := _URL_SCHEMES.match(target):
        address = target[found.end() :].partition("/")[0]  # a path, a trailing /: gone
        tls = found.group(1).lower() in ("https", "grpcs")
        raise ValueError(
            f"{target} is a URL, not a gRPC address: give HOST:PORT, {address}"
            + (" (with TLS: tls=True, `remote --tls`)" if tls else "")
        )
    scheme = _OTHER_SCHEME.match(target)
    if scheme and scheme.group(1).lower() != "dns":  # xds:///name: not ours to read
        return target
    for address in target_addresses(target) or ():
        port = _port_of(address)
        if port and not port.isdigit():
            # "host:50051/" (a URL's scheme dropped, its slash kept), "host:5005 1":
            # gRPC's "Failed to parse port in name" was retried as a server that is down
            fixed = address[: len(address) - len(port)] + port.partition("/")[0].strip()
            usable = _port_of(fixed).isdigit()
            raise ValueError(
                f"{target} is not a gRPC address: the port of {address} is not a number:"
                f" give HOST:PORT{f', {fixed}' if usable else ''}"
            )
    return target


#: a target with a scheme gRPC resolves by other means than host:port (``xds:///``)
_OTHER_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def _port_of(address: str) -> str:
    """The port part of ``host:port`` or ``[v6]:port`` as written ("" when none; a bare
    IPv6 address has none)."""
    if address.startswith("["):
        return address.partition("]")[2].removeprefix(":")
    return address.partition(":")[2] if address.count(":") == 1 else ""


def no_port_hint(target: str) -> str:
    """For a call that never connected to a target without a port: gRPC used 443."""
    addresses = target_addresses(target)
    if not addresses or tcp_address(target) is not None:
        return ""
    address = addresses[0]
    host = _host(address)
    bare_ipv6 = address.count(":") > 1 and not address.startswith("[")
    if not host or not (bare_ipv6 or address in (host, f"[{host}]")):
        return ""  # a port gRPC cannot read: its own error says so
    shown = f"[{host}]" if ":" in host else host
    return (
        f" (no port in {target}: gRPC connects to 443; `hashmatch serve` listens on"
        f" {DEFAULT_PORT} unless told otherwise: {shown}:{DEFAULT_PORT})"
    )


DEFAULT_PORT = 50051


def tcp_address(target: str) -> tuple[str, int] | None:
    """(host, port) of a gRPC target's first address (see :func:`target_addresses`);
    None for one without a port, or ``unix:PATH``."""
    addresses = target_addresses(target)
    if not addresses:
        return None
    address = addresses[0]
    if address.startswith("["):  # [v6]:port
        host, _, after = address[1:].partition("]")
        port = after.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # no port, or a bare IPv6 address
        return None
    if not host or not port.isdigit():
        return None
    return host, int(port)


def certificate_hint(
    target: str,
    now: float | None = None,
    roots: bytes | None = None,
    deadline: float | None = None,
    server_name: str | None = None,
) -> str:
    """For a TLS connection that failed: what is wrong with the certificate the server at
    ``target`` presents, read from the server itself (its dates, then whether ``roots``,
    the client's CA certificates, None = the system's, verify it for ``server_name``,
    else the host: the name gRPC checks); empty when it cannot be read or nothing is
    wrong with it. No handshake starts after ``deadline`` (monotonic; see
    ``certificates.probe_timeout``).

    Why: against an expired certificate, ``--server localhost:PORT`` reported "[::1]:
    Connection refused" (gRPC's last address; the server listened on 127.0.0.1) and
    only gRPC's debug log said "certificate has expired"; so did a self-signed one
    called with ``--tls`` and no ``--ca``. A certificate for another name (a server
    reached by its address) was told to "give the CA that signed it with --ca", the CA
    given being the right one: it now names the certificate's names and how to check
    for one of them.
    """
    from hashmatch.server.certificates import (
        NAME_MISMATCH,
        served_dates,
        served_names,
        served_trust_error,
        utc,
    )

    address = tcp_address(target)
    if address is None:  # unix:PATH and the like: no TLS port to ask
        return ""
    host, port = address
    dates = served_dates(host, port, deadline)
    if dates is None:
        return ""
    now = time.time() if now is None else now
    if now > dates[1]:
        return (
            f" (the server's certificate expired on {utc(dates[1])}: the server must renew"
            " it; `hashmatch serve` reloads it on SIGHUP)"
        )
    if now < dates[0]:
        return (
            f" (the server's certificate is not valid before {utc(dates[0])}: is the"
            " server's or this machine's clock wrong?)"
        )
    refused = served_trust_error(host, port, roots, deadline, server_name)
    if refused is None:
        return ""
    if refused.verify_code in NAME_MISMATCH:
        names = served_names(host, port, deadline)
        held = f"it names {', '.join(names)}" if names else "it names no host"
        return (
            f" (the server's certificate is not for {server_name or host} ({held}):"
            " connect by a name it holds, or check it for one: server_name=NAME,"
            " `remote --server-name NAME`)"
        )
    why = refused.verify_message or str(refused)
    return (
        f" (the server's certificate does not verify here: {why}; give the CA that"
        " signed it with --ca)"
    )


# -- health -----------------------------------------------------------------------------

HEALTH_POLL_SECONDS = 0.05
HEALTH_CHECK_SECONDS = 5.0  # one health check's deadline at most


def health_check_timeout(deadline: float) -> float:
    """The deadline of one health check of a wait that ends at ``deadline`` (monotonic).

    Why: each check took its own 5 s, so against a server that accepts connections but
    does not answer (hung, a black-holing proxy) a 1 s wait took 5 s; a probe with a
    shorter timeout of its own was killed instead of hearing "not SERVING"."""
    return min(HEALTH_CHECK_SECONDS, max(deadline - time.monotonic(), 0.001))


def health_request(service: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def health_status(reply: health_pb2.HealthCheckResponse) -> str:
    """``SERVING`` / ``NOT_SERVING`` / ... from a health reply."""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def health_failure(exc: grpc.RpcError, found: tuple[str, bool] | None = None) -> str:
    """A failed health check as the 'last' answer of a wait; a certificate the client
    cannot verify (its CA, its dates, or a host it does not name), or a TLS setup the
    server refuses (``found``: the client's ``connection_hint``, certain) raises
    ConnectionError at once: waiting would not change it.

    Why: a certificate for another host name was waited on for the whole timeout, then
    reported as "did not become SERVING ...; is `hashmatch serve` running there?"."""
    last = f"{exc.code().name}: {exc.details()}"
    if found is not None and found[1]:
        raise ConnectionError(f"{last}{found[0]}") from None
    if handshake_refused(last):
        raise ConnectionError(f"{last}{tls_hint(last)}") from None
    return last


def not_serving(timeout: float, last: str) -> TimeoutError:
    """The error of a wait for SERVING that ran out, with the last answer and a hint."""
    hint = tls_hint(last) or "; is `hashmatch serve` running there?"
    return TimeoutError(
        f"the server did not become SERVING within {timeout:g} s (last: {last}){hint}"
    )


# -- requests ---------------------------------------------------------------------------

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
    if isinstance(item, str | bytes):
        # ``match(("pdq", hex))``, a pair not in a list: each of its strings came here,
        # and unpacking one failed "too many values to unpack (expected 2)"
        raise TypeError(
            f"hashes: each item is a (type, hex) pair or a HashValue, got {item[:70]!r};"
            ' a single hash goes in a list: [("pdq", hex)]'
        )
    signal_type, value = item
    if isinstance(value, bytes | bytearray):
        return common_pb2.HashValue(signal_type=signal_type, raw=bytes(value))
    return common_pb2.HashValue(signal_type=signal_type, hex=value)


def names(value: str | Iterable[str]) -> list[str]:
    """Names (labels, lists, signal types) as a list, a bare str being one name.

    Why: a str is itself an iterable of str, so ``labels="csam"`` was stored as four
    labels, ``c``, ``s``, ``a``, ``m``, without a word, and ``hash([data], "md5")`` or
    ``lists="partner-a"`` failed as the unknown type ``m`` or the list ``p``."""
    return [value] if isinstance(value, str) else list(value)


def media_items(media: MediaInput | Iterable[MediaInput]) -> list[bytes]:
    """Media as the request's list of bytes: one bytes-like value is one item, a
    bytearray or memoryview is sent as its bytes.

    Why: ``hash(data)`` or ``match(media=data)`` (one upload) was iterated as its
    byte values and failed "TypeError: expected bytes, int found"; a bytearray item
    (a buffer read into) failed "expected bytes, bytearray found". A file object (an
    open file, ``io.BytesIO``, a web framework's upload) is refused: iterated, it gave
    its lines, each sent as an upload of its own (a JPEG split at its newline bytes,
    refused as 20 media items over the limit, or as undecodable ones). So is a file's
    name (a str, a Path): the client reads no files."""
    if isinstance(media, bytes | bytearray | memoryview):
        media = [media]
    elif hasattr(media, "read") or isinstance(media, str | os.PathLike):
        _as_bytes(media)  # raises, saying what to pass instead
    return [item if isinstance(item, bytes) else _as_bytes(item) for item in media]


_FILE_OBJECT = "media: a file object ({}) is not sent as it is: pass its bytes, f.read()"


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    if hasattr(item, "read"):
        raise TypeError(_FILE_OBJECT.format(type(item).__name__))
    if isinstance(item, str | os.PathLike):
        # a file's name: a str was taken apart into one-letter items ("got str"), a
        # Path failed "'PosixPath' object is not iterable"; the client reads no files
        shown = str(item) if len(str(item)) <= 200 else f"{str(item)[:200]}..."
        raise TypeError(
            f"media: a {type(item).__name__} ({shown!r}) is not sent: each item is the bytes"
            " of one file (a file's name: pass Path(name).read_bytes())"
        )
    raise TypeError(f"media: each item is the bytes of one file, got {type(item).__name__}")


def signal(
    signal_type: str,
    value: str | bytes,
    *,
    labels: str | Sequence[str] = (),
    external_id: str = "",
    quality: int | None = None,
    expires_at: float | str | datetime | None = None,
) -> signals_pb2.Signal:
    """One signal to ingest. Each states the whole signal: a re-send without the
    ``quality`` or ``expires_at`` a partner gave clears them in the store.
    ``labels``: a list, or one label as a str.
    ``expires_at``: epoch seconds, an ISO-8601 string (as in a CSV) or a datetime."""
    pb = signals_pb2.Signal(
        hash=hash_value((signal_type, value)), labels=names(labels), external_id=external_id
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
    labels: str | Sequence[str] = (),
    external_id: str = "",
    expires_at: float | str | datetime | None = None,
) -> signals_pb2.Signal:
    """A vPDQ signal: one video given as its frames' PDQ hex."""
    pb = signals_pb2.Signal(
        hash=common_pb2.HashValue(signal_type="vpdq"),
        frames=list(frames),
        frame_qualities=list(qualities),
        timestamps=list(timestamps),
        labels=names(labels),
        external_id=external_id,
    )
    if expires_at is not None:
        pb.expires_at = _epoch_seconds(expires_at)
    return pb


class MatchArgs(TypedDict, total=False):
    """The keyword arguments of ``match`` (both clients) after ``hashes``, those of
    :func:`match_request`: typed, so an editor or a type checker knows them (they were
    ``**options: Any``, and a misspelt one failed only when called)."""

    media: MediaInput | Iterable[MediaInput]
    media_types: str | Sequence[str]
    threshold: int | None
    lists: str | Sequence[str]
    max_results: int
    dihedral: bool
    trim_borders: bool
    all_frames: bool
    uncrop: bool
    derotate: bool
    upscale_small: bool
    upscale_small_replicate: bool
    upscale_small_phases: bool
    min_quality: int | None
    low_quality_queries: str | None
    request_id: str
    videos: Sequence[Sequence[str] | matcher_pb2.VideoQuery]


def match_request(
    hashes: Iterable[HashInput] = (),
    *,
    media: MediaInput | Iterable[MediaInput] = (),
    media_types: str | Sequence[str] = (),
    threshold: int | None = None,
    lists: str | Sequence[str] = (),
    max_results: int = 0,
    dihedral: bool = False,
    trim_borders: bool = False,
    all_frames: bool = False,
    uncrop: bool = False,
    derotate: bool = False,
    upscale_small: bool = False,
    upscale_small_replicate: bool = False,
    upscale_small_phases: bool = False,
    min_quality: int | None = None,
    low_quality_queries: str | None = None,
    request_id: str = "",
    videos: Sequence[Sequence[str] | matcher_pb2.VideoQuery] = (),
) -> matcher_pb2.MatchRequest:
    """One MatchRequest (what ``match`` sends, and what ``match_stream`` reads).

    ``hashes``: ``(type, hex or raw bytes)`` pairs or HashValues. ``media``: uploaded
    files' bytes (one bytes value is one item), hashed server-side with
    ``media_types`` (default pdq). ``videos``: vPDQ queries, each a list of frame hex
    (or a VideoQuery). ``media_types`` and ``lists`` take a list or one name as a str.
    ``low_quality_queries``: ``"match_quality_stored"`` or ``"skip"`` (None = the
    server's default, match_quality_stored). The other options are MatchOptions'
    (the README's API table says what each does)."""
    options = _match_options(
        lists=names(lists),
        max_results=max_results,
        dihedral=dihedral,
        trim_borders=trim_borders,
        all_frames=all_frames,
        uncrop=uncrop,
        derotate=derotate,
        upscale_small=upscale_small,
        upscale_small_replicate=upscale_small_replicate,
        upscale_small_phases=upscale_small_phases,
        low_quality_queries=low_quality_enum(low_quality_queries),
        threshold=threshold,
        min_quality=min_quality,
    )
    return matcher_pb2.MatchRequest(
        hashes=[hash_value(h) for h in hashes],
        media=media_items(media),
        media_types=names(media_types),
        options=options,
        request_id=request_id,
        videos=[_video_query(v) for v in videos],
    )


def _video_query(video: Sequence[str] | matcher_pb2.VideoQuery) -> matcher_pb2.VideoQuery:
    """One of ``match_request``'s ``videos``: a VideoQuery, or its frames' hex.

    Why: ``videos=frames`` (one video's frames, not in a list) sent each frame as a
    video of one-character frames, refused "videos[0].frames[0]: vpdq hash must be 64
    hex characters, got 1"."""
    if isinstance(video, matcher_pb2.VideoQuery):
        return video
    if isinstance(video, str):
        raise TypeError(
            "videos: each item is one video, the list of its frames' hex (or a"
            " VideoQuery), got a str; one video goes in a list: videos=[frames]"
        )
    return matcher_pb2.VideoQuery(signal_type="vpdq", frames=list(video))


def _match_options(**fields: Any) -> matcher_pb2.MatchOptions:
    """MatchOptions of ``fields`` (None: unset), a value protobuf refuses named.

    Why: ``max_results=-1`` raised "ValueError: Value out of range: -1" and
    ``threshold="31"`` a TypeError about ``str``, neither saying which argument."""
    given = {name: value for name, value in fields.items() if value is not None}
    try:
        return matcher_pb2.MatchOptions(**given)
    except (TypeError, ValueError):
        for name, value in given.items():
            try:
                matcher_pb2.MatchOptions(**{name: value})
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}: {exc}") from None
        raise


class MatchPlan:
    """One ``match`` call as requests within the server's ``max_batch`` (hashes, and
    video frames, per request), and their replies merged into the one reply a single
    request would have had.

    Why: a pipeline that passed more than 10,000 hashes got INVALID_ARGUMENT for the
    whole call. Each part is its own request (its own retries; the call's deadline is
    shared by all, see :meth:`Attempts.renewed`); the media ride in the first (their
    limit is ``max_media_items``). ``match_stream`` splits its requests with it too.
    """

    def __init__(self, request: matcher_pb2.MatchRequest, max_batch: int):
        self.request, self.max_batch = request, max_batch
        self.refused: list[grpc.RpcError] = []  # parts refused for their fields, in order
        hashes = _chunks(list(request.hashes), max_batch, lambda _hash: 1)
        videos = _chunks(list(request.videos), max_batch, lambda video: len(video.frames))
        self.parts = [request]
        if len(hashes) > 1 or len(videos) > 1:
            self.parts = [
                self._part(hashes[k] if k < len(hashes) else [],
                           videos[k] if k < len(videos) else [], with_media=k == 0)
                for k in range(max(len(hashes), len(videos)))
            ]  # fmt: skip

    def _part(self, hashes: list, videos: list, with_media: bool) -> matcher_pb2.MatchRequest:
        request = self.request
        part = matcher_pb2.MatchRequest(
            hashes=hashes, videos=videos, options=request.options, request_id=request.request_id
        )
        if with_media:
            part.media.extend(request.media)
            part.media_types.extend(request.media_types)
        return part

    @contextmanager
    def sending(self, k: int) -> Iterator[None]:
        """Around part ``k``'s call: its RpcError gets a note saying which items the
        indexes it names count from, or how to set ``max_batch`` for a server whose
        limit is lower; and ``item_offsets`` (hashes and videos of the parts before),
        so :func:`~hashmatch.server.errors.bad_request_fields` names the item of the
        whole call, as the merged reply's indexes do (a pipeline dropping the item a
        BadRequest names dropped another one).

        A part refused for its fields (INVALID_ARGUMENT) does not end the call: the
        other parts are sent too, and :meth:`merged` raises the first refusal naming
        the bad fields of every refused part. Why: a split call that named only its
        first refused part's fields took a round trip per part to clean. Another error
        after a refusal raises the refusal (the call was refused whatever else)."""
        try:
            yield
        except grpc.RpcError as exc:
            self.annotate(exc, k)
            if len(self.parts) > 1 and _refused_fields(exc):
                self.refused.append(exc)
                return
            if self.refused:
                raise self._refusal() from None
            raise

    def annotate(self, exc: grpc.RpcError, k: int) -> None:
        """Give part ``k``'s error its note and ``item_offsets`` (see :meth:`sending`)."""
        limit = _batch_limit(exc)
        if limit is not None and limit < self.max_batch:
            exc.add_note(
                f"the server takes at most {limit} hashes or video frames per Match, this"
                f" client sent up to {self.max_batch}: make the client with"
                f" max_batch={limit} (HashmatchClient(..., max_batch={limit}))"
            )
        elif len(self.parts) > 1:
            start, end = self._before(k), self._before(k + 1)
            offsets = getattr(exc, "item_offsets", {})
            exc.item_offsets = {**offsets, "hashes": start[0], "videos": start[1]}  # type: ignore[attr-defined]
            exc.add_note(
                f"sent as {len(self.parts)} requests of at most {self.max_batch} hashes or"
                f" video frames; this one held hashes[{start[0]}:{end[0]}] and"
                f" videos[{start[1]}:{end[1]}]: the indexes above count from there"
                " (bad_request_fields counts them in the whole call)"
            )

    def _refusal(self) -> grpc.RpcError:
        """The first refused part's error, its ``whole_call_violations`` the bad fields of
        every refused part (indexes in the whole call), the first 100 listed within the
        7 KiB a server's refusal takes, then one (``request``) counting the rest."""
        from google.rpc import status_pb2

        from hashmatch.server.errors import (
            bad_request_fields,
            counted_violations,
            fitting_violations,
        )
        from hashmatch.server.violations import MAX_KEPT

        first = self.refused[0]
        pairs: list[tuple[str, str]] = []
        total = 0
        for exc in self.refused:
            listed, count = counted_violations(bad_request_fields(exc))
            pairs += listed
            total += count
        if len(self.refused) > 1:
            status = status_pb2.Status(code=first.code().value[0], message=first.details() or "")
            fitting = fitting_violations(pairs[:MAX_KEPT], total, status)
            first.whole_call_violations = [(v.field, v.description) for v in fitting]  # type: ignore[attr-defined]
            first.add_note(
                f"{len(self.refused)} of the {len(self.parts)} requests were refused,"
                f" {total} bad fields in all: bad_request_fields names them"
            )
        return first

    def _before(self, k: int) -> tuple[int, int]:
        """How many hashes and videos the parts before part ``k`` hold."""
        return sum(len(p.hashes) for p in self.parts[:k]), sum(
            len(p.videos) for p in self.parts[:k]
        )

    def merged(self, replies: Sequence[matcher_pb2.MatchResponse]) -> matcher_pb2.MatchResponse:
        """The parts' replies as one: each result's ``index`` counts in its own source
        (hashes, media, videos) across the parts, results are ordered hashes, media,
        videos, and each match's ``query_index`` is its result's position. Raises the
        first refused part's error if any part was refused (see :meth:`sending`)."""
        if self.refused:
            raise self._refusal()
        if len(replies) == 1:
            return replies[0]
        by_source: dict[int, list[matcher_pb2.QueryResult]] = {HASH: [], MEDIA: [], VIDEO: []}
        for reply in replies:
            offsets = {s: len(results) for s, results in by_source.items()}
            for result in reply.results:
                result.index += offsets[result.source]
                by_source[result.source].append(result)
        results = [*by_source[HASH], *by_source[MEDIA], *by_source[VIDEO]]
        for position, result in enumerate(results):
            for found in result.matches:
                found.query_index = position
        return matcher_pb2.MatchResponse(results=results, request_id=self.request.request_id)


HASH = matcher_pb2.QueryResult.SOURCE_HASH
MEDIA = matcher_pb2.QueryResult.SOURCE_MEDIA
VIDEO = matcher_pb2.QueryResult.SOURCE_VIDEO
_OVER_MAX_BATCH = re.compile(r"(?:hashes|video frames) is over the limit of (\d+) per request")


def _refused_fields(exc: grpc.RpcError) -> bool:
    """Whether ``exc`` refuses the request for its fields (INVALID_ARGUMENT with a
    BadRequest), other than for being over the server's max_batch (every part is)."""
    if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT or _batch_limit(exc) is not None:
        return False
    from hashmatch.server.errors import bad_request_fields

    return bool(bad_request_fields(exc))


def _batch_limit(exc: grpc.RpcError) -> int | None:
    """The server's max_batch when ``exc`` is its refusal of a request over it."""
    if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
        return None
    found = _OVER_MAX_BATCH.search(exc.details() or "")
    return int(found.group(1)) if found else None


def _chunks(items: list, limit: int, weight: Callable[[Any], int]) -> list[list]:
    """``items`` in order, cut into runs whose weights add up to ``limit`` at most (an
    item heavier than ``limit`` alone: the server names it)."""
    runs: list[list] = [[]]
    load = 0
    for item in items:
        load += weight(item)
        if load > limit and runs[-1]:
            runs.append([])
            load = weight(item)
        runs[-1].append(item)
    return runs if runs[0] else []


def hash_request(
    media: MediaInput | Iterable[MediaInput],
    signal_types: str | Sequence[str] = ("pdq",),
    *,
    dihedral: bool = False,
    trim_borders: bool = False,
) -> matcher_pb2.HashRequest:
    """A HashRequest: ``media`` as in :func:`match_request` (one bytes value is one
    item), ``signal_types`` a list or one name as a str."""
    return matcher_pb2.HashRequest(
        media=media_items(media),
        signal_types=names(signal_types),
        dihedral=dihedral,
        trim_borders=trim_borders,
    )


def new_request_id(given: str | None = None) -> str:
    """A write's ``request_id``: one per logical request, the same on each of its retries;
    ``given`` (the caller's, for a call it may run again after its own crash) if any.

    Why: an Ingest or Retract applied by the server whose reply was lost (the connection
    dropped) was retried, and the retry reported its own counts ("retracted 0",
    everything "unchanged"); a server that sees the id again answers with the first
    attempt's reply instead."""
    return given or uuid.uuid4().hex


def retract_requests(
    list_name: str,
    *,
    hashes: Iterable[HashInput] = (),
    signal_ids: Iterable[int] = (),
    reason: str = "",
    batch_size: int = 1000,
    request_id: str | None = None,
) -> Iterator[signals_pb2.RetractRequest]:
    """The targets as requests of ``batch_size`` (the server refuses more than its
    ``max_batch`` in one); at least one, so a call with no targets hears the server
    say so. Each has its own ``request_id``, sent again by its retries: a new one, or
    from the caller's ``request_id``, as given for one request, ``<id>.<n>`` for the
    n-th (from 0) of several (each request is a retraction of its own)."""
    targets: list[common_pb2.HashValue | int] = [hash_value(h) for h in hashes]
    targets += [int(i) for i in signal_ids]
    batch_size = max(1, batch_size)
    starts = range(0, max(len(targets), 1), batch_size)
    for n, start in enumerate(starts):
        chunk = targets[start : start + batch_size]
        given = request_id and (request_id if len(starts) == 1 else f"{request_id}.{n}")
        yield signals_pb2.RetractRequest(
            list_name=list_name,
            hashes=[t for t in chunk if not isinstance(t, int)],
            signal_ids=[t for t in chunk if isinstance(t, int)],
            reason=reason,
            request_id=new_request_id(given),
        )


def add_retract_reply(
    total: signals_pb2.RetractResponse, reply: signals_pb2.RetractResponse
) -> None:
    """Sum ``reply`` into ``total``: counts add up, ``not_found`` and
    ``already_retracted`` keep the first 1000 as a single reply does."""
    total.retracted += reply.retracted
    total.not_found_total += reply.not_found_total
    total.already_retracted_total += reply.already_retracted_total
    for listed, more in ((total.not_found, reply.not_found),
                         (total.already_retracted, reply.already_retracted)):  # fmt: skip
        listed.extend(more[: max(MAX_NOT_FOUND_LISTED - len(listed), 0)])


@contextmanager
def retract_progress(
    total: signals_pb2.RetractResponse, reached: list[bool] | None = None
) -> Iterator[None]:
    """A retract's requests, in ``with``: a failed one's RpcError gets
    ``retracted_before``, ``total`` so far (the replies of the requests before it), and
    ``reached_server``: whether an attempt failed other than connecting (``reached``,
    filled by :func:`noting_reached`): the server took a request and went away, so it
    may have applied it, its reply lost.

    Why: those retractions are done; without their count a caller that re-sends the
    whole call (idempotent) hears ``retracted`` of the rest only, and cannot say how
    many signals the call retracted."""
    try:
        yield
    except grpc.RpcError as exc:
        exc.retracted_before = total  # type: ignore[attr-defined]
        exc.reached_server = bool(reached)  # type: ignore[attr-defined]
        raise


def noting_reached(method: Callable, reached: list[bool]) -> Callable:
    """``method`` (a unary stub method) that appends True to ``reached`` when a call of
    it fails other than connecting: the retries of a server killed mid-call all say
    "failed to connect", which must not hide that the first attempt reached it."""

    def call(request: Any, **kwargs: Any) -> Any:
        try:
            return method(request, **kwargs)
        except grpc.RpcError as exc:
            note_reached(exc, reached)
            raise

    return call


def note_reached(exc: grpc.RpcError, reached: list[bool]) -> None:
    """Append True to ``reached`` when ``exc`` is a failure other than connecting (see
    :func:`noting_reached`; for calls made otherwise, e.g. as a future)."""
    if CONNECT_FAILED not in (exc.details() or ""):
        reached.append(True)


def changes_request(
    since: int = 0,
    *,
    signal_types: str | Sequence[str] = (),
    max_changes: int = 0,
    since_signal_id: int | None = None,
) -> signals_pb2.ChangesRequest:
    """``since_signal_id``: given (0 too), the caller resumes inside log entries
    (``split_entries``): the changes of entry ``since + 1`` up to that signal id are read."""
    return signals_pb2.ChangesRequest(
        since=since,
        signal_types=names(signal_types),
        max_changes=max_changes,
        split_entries=since_signal_id is not None,
        since_signal_id=since_signal_id or 0,
    )


# -- request streams --------------------------------------------------------------------


class SourceGuard:
    """Around the reading of a caller's iterable that gRPC streams as requests (ingest's
    signals, match_stream's requests): what it raises (a bad row, an unreadable upload)
    ends the request stream where it is, and :meth:`raise_error` raises it once the
    replies to what was sent before it are in.

    Why: raised inside gRPC's request stream, the caller's own exception was lost: the
    sync client raised RpcError UNKNOWN "Exception iterating requests!" (match_stream
    dropped the replies already due), the asyncio one ``asyncio.CancelledError``, which
    a pipeline's ``except Exception`` does not catch and reads as its task cancelled.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.attempt = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One attempt's reading. An attempt given up (its call failed and was retried)
        may still be in the source on gRPC's thread: what it raises later is not the
        current attempt's, and a retry that succeeded raised it."""
        self.error = None  # a retry reads the source afresh
        self.attempt += 1
        mine = self.attempt
        try:
            yield
        except Exception as exc:  # the caller's iterable, not gRPC
            if mine == self.attempt:
                self.error = exc

    def raise_error(self, **notes: Any) -> None:
        """Raise what the source raised, if anything, with ``notes`` as attributes."""
        if self.error is not None:
            for name, value in notes.items():
                setattr(self.error, name, value)
            raise self.error


class StreamPlan:
    """One ``match_stream`` call across its attempts: the caller's requests split into
    parts within ``max_batch`` (:class:`MatchPlan`), which parts were answered, the
    replies of a split request so far, and the retry schedule.

    Why: a streamed request over the server's ``max_batch`` was refused, and a stream
    refused for a busy slot (or cut) was not retried: requests already read from the
    caller's iterable would have been lost.

    The retry rule: a part sent (or read from the caller's iterable) but not answered
    when a stream fails is sent again, first, on the next stream; an answered one never
    is (its reply is kept, or was delivered). The server answers a stream's messages in
    order, so the unanswered ones are the parts from the first unanswered on. Matching
    is read-only, so sending a part twice is harmless whatever the failure was.

    Each attempt's request stream reads the caller's iterable through the one
    ``source`` (one reader at a time: the sync client holds a lock, the asyncio one
    shares the pending read), so a request the failed attempt's stream was still
    waiting for is kept and sent by the next one, not lost.
    """

    def __init__(self, max_batch: int, attempts: Attempts):
        self.max_batch = max_batch
        self.attempts = attempts
        self.reader = SourceGuard()  # what reading the caller's iterable raised
        self.parts: dict[int, tuple[int, MatchPlan, int]] = {}  # seq: (request, plan, part)
        self.read = 0  # parts read: the seq of the next
        self.requests = 0  # the caller's requests read
        self.answered = 0  # parts answered: the seq of the next reply
        self.delivered = 0  # results handed to the caller
        self.replies: list[matcher_pb2.MatchResponse] = []  # of the next result's parts
        self.attempt = 0  # the current attempt
        self.first = 0  # the seq the current attempt's stream began with
        self.ended = False  # the caller's iterable is read to its end (or raised)
        self.progressed = False  # a reply came since the last failure

    def begin(self) -> tuple[int, int]:
        """A new attempt: (its number, the seq its stream starts from)."""
        self.attempt += 1
        self.first = self.answered
        if self.progressed:
            self.attempts = self.attempts.renewed()
            self.progressed = False
        return self.attempt, self.first

    def current(self, attempt: int) -> bool:
        return attempt == self.attempt

    def done(self) -> bool:
        """Nothing left to send or to hear: a retry would be an empty stream."""
        return self.ended and self.answered == self.read

    def part(self, seq: int) -> matcher_pb2.MatchRequest | None:
        """Part ``seq`` if it has been read (None: read the source first)."""
        entry = self.parts.get(seq)
        return None if entry is None else entry[1].parts[entry[2]]

    def take(self, request: matcher_pb2.MatchRequest | None) -> None:
        """A request read from the caller's iterable (None: its end)."""
        if request is None:
            self.ended = True
            return
        plan = MatchPlan(request, self.max_batch)
        for k in range(len(plan.parts)):
            self.parts[self.read] = (self.requests, plan, k)
            self.read += 1
        self.requests += 1

    def answer(self, reply: matcher_pb2.MatchResponse) -> matcher_pb2.MatchResponse | None:
        """The reply to the first unanswered part; the caller's result once every part
        of its request is answered (merged as ``match`` merges them), else None."""
        _index, plan, k = self.parts.pop(self.answered)
        self.answered += 1
        self.progressed = True
        self.replies.append(reply)
        if k + 1 < len(plan.parts):
            return None
        result, self.replies = plan.merged(self.replies), []
        self.delivered += 1
        return result

    def failed(self, exc: grpc.RpcError) -> None:
        """Annotate the call's error: ``results_delivered``, and for the server's refusal
        of a part, where it is in the caller's requests (``item_offsets``, as ``match``)."""
        exc.results_delivered = self.delivered  # type: ignore[attr-defined]
        entry = self.parts.get(self.answered)
        if entry is not None:
            index, plan, k = entry
            # the server's stream[n] counts this attempt's messages: the n-th is this part
            exc.item_offsets = {"stream": index - (self.answered - self.first)}  # type: ignore[attr-defined]
            plan.annotate(exc, k)
        exc.add_note(
            f"match_stream delivered {self.delivered} results (the replies to requests"
            f"[0:{self.delivered}]) before this error: to go on, send the requests from"
            f" requests[{self.delivered}] again"
        )


# -- ingest -----------------------------------------------------------------------------


#: How long a stopped ingest waits for the server's reply to what it sent. Not a few
#: seconds: HTTP/2 flow control lets the client run megabytes ahead of the server's
#: store (measured: ~75,000 PDQ signals in flight, 6-8 s of a loaded 2-core server's
#: work), all of which the server stores before it reads the stream's end and replies.
STOP_GRACE_SECONDS = 30.0


class IngestStopped(Exception):
    """An ingest the caller stopped (its ``stop`` event) ended without the server's
    reply: the server did not answer within the grace, the call failed after the stop,
    or the stop came between attempts. ``signals_sent`` (set as on an RpcError) is then
    an upper bound on what is stored."""


def stopped_then_failed(exc: grpc.RpcError) -> IngestStopped:
    """The :class:`IngestStopped` of a call that failed after its stop (raise it ``from
    exc``): the status, the server's details and the BadRequest fields they leave out.

    Why: it said only ``INVALID_ARGUMENT``, so a strict refusal after a Ctrl-C did not
    say which signal of which message the server refused, as the same failure without
    a stop does."""
    from hashmatch.server.errors import bad_request_fields

    details = exc.details() or ""
    said = f"{exc.code().name}: {details}" if details else exc.code().name
    fields = "".join(
        f"; {f}: {d}" for f, d in bad_request_fields(exc) if f"{f}: {d}" not in details
    )
    return IngestStopped(f"stopped; then the call failed: {said}{fields}")


def stopped_between_attempts() -> IngestStopped:
    """A stop seen in a retry's pause: no attempt is made, so no reply says what the
    earlier ones stored."""
    return IngestStopped("stopped between attempts: no reply says what was stored")


def stopped_without_reply(grace: float) -> IngestStopped:
    """A stopped call the server did not answer within ``grace`` seconds (the client
    cancels it)."""
    return IngestStopped(f"stopped; the server did not reply within {grace:g} s")


class IngestPlan:
    """One ingest call's messages, deadline and progress, across its attempts.

    ``signals``: a list (read whole by the client: a retry re-sends it, and the
    deadline scales with it) or a callable that returns the signals afresh for each
    attempt (a retry re-sends from the first signal: nothing says how far a cut-off
    stream was stored, and ingest is an upsert). ``total``: how many a callable yields
    (an upper bound will do), or None when unknown. The stream's default deadline
    (``timeout`` CLIENT_TIMEOUT) is the client's timeout per message; None: none;
    ``most_sent`` is the most signals any attempt handed to gRPC (a retry that fails
    early must not lower it), an upper bound on what was stored.
    """

    def __init__(
        self,
        list_name: str,
        signals: list[signals_pb2.Signal] | Callable[[], Any],
        total: int | None,
        client_timeout: float | None,
        source: str = "",
        strict: bool = False,
        batch_size: int = 1000,
        timeout: CallTimeout = CLIENT_TIMEOUT,
        request_id: str | None = None,
    ):
        self.list_name, self.source, self.strict = list_name, source, strict
        if callable(signals):
            self.fresh = signals
        else:
            self.fresh, total = (lambda: signals), len(signals)
        self.total = total
        self.batch_size = max(1, batch_size)
        if isinstance(timeout, ClientTimeout):  # the client's per message
            # a stream of unknown length (or a client without a timeout): no deadline
            timeout = None
            if client_timeout is not None and total is not None:
                timeout = client_timeout * max(1, -(-total // self.batch_size))
        self.timeout = timeout
        self.client_timeout = client_timeout
        self.most_sent = 0
        self.reached: list[bool] = []  # attempts that failed other than connecting
        self.expiries = False  # any signal sent with expires_at (an older server drops them)
        self.reader = SourceGuard()  # what reading ``signals`` raised
        # every attempt's: a retry gets the first's reply
        self.request_id = new_request_id(request_id)

    def call(self, ingest: Callable, messages: Callable[[], Any]) -> Callable:
        """An attempt for the client's retry loop: ``ingest`` (the Signals.Ingest stub
        method) with a fresh ``messages()`` stream."""

        # a stream the server took and that was then cut (its process killed): the
        # retries' "failed to connect" must not hide that some of it was stored
        ingest = noting_reached(ingest, self.reached)

        def attempt(_request: None, *, timeout: float | None, metadata: Any) -> Any:
            return ingest(messages(), timeout=timeout, metadata=metadata)

        return attempt

    def attempts(self, retries: int, backoff: float) -> Attempts:
        """The call's retry schedule: its deadline (none for a stream of unknown length)
        and, after a failure, retries for up to the client's timeout.

        Why: a stream of unknown length was given the client's timeout as the deadline
        of its retries, though not of its attempts: one that had streamed for longer
        than that was not retried at all when the server restarted."""
        return Attempts(
            self.timeout, retries, backoff, retry_window=self.client_timeout, diagnose=True
        )

    def batcher(self) -> IngestBatcher:
        return IngestBatcher(self)

    def message(self, chunk: list[signals_pb2.Signal]) -> signals_pb2.IngestRequest:
        return signals_pb2.IngestRequest(
            list_name=self.list_name,
            signals=chunk,
            source=self.source,
            strict=self.strict,
            request_id=self.request_id,
        )

    def messages(self, stop: threading.Event | None = None) -> Iterator[signals_pb2.IngestRequest]:
        """One attempt's messages from a source of plain iterables; once ``stop`` is set
        they end (the signals of the message being filled are not sent): gRPC then
        half-closes the stream and the server replies for what it got."""
        batcher = self.batcher()
        with self.reader.reading():
            for item in self.fresh():
                if stop is not None and stop.is_set():
                    return
                if (message := batcher.add(item)) is not None:
                    yield message
            if stop is not None and stop.is_set():
                return
            if (message := batcher.end()) is not None:
                yield message

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """A failed call's RpcError, or the stop that ended it (KeyboardInterrupt, the
        CLI's stop signal: any BaseException that is no Exception), gets ``signals_sent``
        (the most any attempt sent) and ``signals_total``: the CLI says how much of an
        interrupted ingest may be stored."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, grpc.RpcError | IngestStopped) or not isinstance(exc, Exception):
                exc.signals_sent, exc.signals_total = self.most_sent, self.total  # type: ignore[attr-defined]
                exc.reached_server = bool(self.reached)  # type: ignore[attr-defined]
            raise

    def checked(
        self, reply: signals_pb2.IngestResponse, stacklevel: int = 3
    ) -> signals_pb2.IngestResponse:
        """``reply``, with a warning when the server predates ``expires_at`` and the
        signals carried one (it stored them without); or the source's exception (see
        :class:`SourceGuard`), with ``signals_sent`` / ``signals_total``: the messages
        sent before it are stored, as ``reply`` says."""
        self.reader.raise_error(signals_sent=self.most_sent, signals_total=self.total)
        if not reply.HasField("still_retracted") and self.expiries:
            warnings.warn(
                "the server predates Signal.expires_at: it stored these signals without"
                " their expiries (upgrade it before relying on expiries)",
                stacklevel=stacklevel,
            )
        return reply


class IngestBatcher:
    """One attempt's batching: signals in, a message out every ``batch_size`` signals or
    MAX_INGEST_MESSAGE_BYTES, whichever comes first (vPDQ signals of long videos are
    tens of KB each: ``batch_size`` of them can be over the server's message limit)."""

    def __init__(self, plan: IngestPlan):
        self.plan = plan
        self.chunk: list[signals_pb2.Signal] = []
        self.chunk_bytes = 0
        self.sent = 0

    def add(self, item: signals_pb2.Signal) -> signals_pb2.IngestRequest | None:
        self.chunk.append(item)
        self.chunk_bytes += item.ByteSize()
        self.plan.expiries = self.plan.expiries or item.HasField("expires_at")
        full = len(self.chunk) == self.plan.batch_size
        return self._flush() if full or self.chunk_bytes >= MAX_INGEST_MESSAGE_BYTES else None

    def end(self) -> signals_pb2.IngestRequest | None:
        """The last message: an empty call still sends one (the server says so)."""
        return self._flush() if self.chunk or not self.sent else None

    def _flush(self) -> signals_pb2.IngestRequest:
        self.sent += len(self.chunk)
        self.plan.most_sent = max(self.plan.most_sent, self.sent)
        message, self.chunk, self.chunk_bytes = self.plan.message(self.chunk), [], 0
        return message
