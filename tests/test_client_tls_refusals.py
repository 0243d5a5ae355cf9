"""A TLS setup the server refuses is said as such by the library (both clients) and
not retried for the call's whole deadline; a server that is down still is.

Why: a mutual-TLS server refusing the client's certificate (or none), or a TLS server
called without TLS, read "UNAVAILABLE: failed to connect to all addresses; ... Socket
closed", the words of a server that is down, after retrying for the whole timeout (30 s
by default); only `hashmatch remote` added a hint. gRPC's words cannot tell these apart
(over TLS 1.3 the client has finished its handshake before the server checks its
certificate), so the client asks the server itself, once. Real servers, real sockets.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.certificates import refuses_client_certificate
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.server.client_shared import CERTIFICATE_REFUSED_HINT
from hashmatch.server.testing import running_server, self_signed_cert

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

TIMEOUT = 20.0  # each call's deadline: a refusal must be said well before it
NO_CERTIFICATE = "requires a client certificate (mutual TLS) and this client gave none"
REFUSED = "the server refused this client's certificate (mutual TLS)"
SPEAKS_TLS = "the server speaks TLS and this client connected without it"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("certs")
    return {name: self_signed_cert(folder, name) for name in ("server", "client", "other")}


@pytest.fixture(scope="module")
def mutual(tmp_path_factory, certs):
    """A server that requires a client certificate signed by ``client``'s."""
    key, cert = certs["server"]
    data = tmp_path_factory.mktemp("mutual")
    with running_server(data, tls_cert=cert, tls_key=key, tls_client_ca=certs["client"][1]) as ts:
        yield ts


def _access(certs, client: str | None) -> dict:
    access = {"root_certificates": certs["server"][1], "timeout": TIMEOUT}
    if client is not None:
        key, cert = certs[client]
        access.update(client_cert=cert, client_key=key)
    return access


def _failed_fast(call) -> grpc.RpcError:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        call()
    took = time.monotonic() - started
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert took < TIMEOUT / 4, f"{took:.1f} s: retried as a server that is down"
    return failed.value


@pytest.mark.parametrize(
    ("client", "hint"), [(None, NO_CERTIFICATE), ("other", REFUSED)], ids=["none", "untrusted"]
)
def test_a_client_certificate_the_server_refuses_is_named_at_once(mutual, certs, client, hint):
    with HashmatchClient(mutual.target, **_access(certs, client)) as c:
        error = _failed_fast(c.list_hash_lists)
        streamed = _failed_fast(lambda: list(c.match_stream([c.match_request([])])))
    for exc in (error, streamed):
        assert hint in exc.connection_hint, exc.connection_hint
        assert any(hint in note for note in exc.__notes__)  # shown with the traceback
    with HashmatchClient(mutual.target, **_access(certs, "client")) as c:
        assert list(c.list_hash_lists().lists) == []  # the right certificate is taken


def test_the_asyncio_client_names_it_too(mutual, certs):
    async def calls() -> tuple[grpc.RpcError, grpc.RpcError]:
        async with AsyncHashmatchClient(mutual.target, **_access(certs, None)) as c:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                await c.stats()
            assert time.monotonic() - started < TIMEOUT / 4
        async with AsyncHashmatchClient(mutual.target, timeout=TIMEOUT) as plain:
            with pytest.raises(grpc.RpcError) as plain_failed:
                await plain.list_hash_lists()
        return failed.value, plain_failed.value

    refused, plain = asyncio.run(calls())
    assert NO_CERTIFICATE in refused.connection_hint
    assert SPEAKS_TLS in plain.connection_hint


def test_a_plaintext_client_of_a_tls_server_is_told_at_once(mutual, certs):
    with HashmatchClient(mutual.target, timeout=TIMEOUT) as c:
        error = _failed_fast(c.list_hash_lists)
        with pytest.raises(ConnectionError, match=SPEAKS_TLS):
            c.wait_until_serving(TIMEOUT)  # not waited out either
    assert SPEAKS_TLS in error.connection_hint


def test_a_tls_client_of_a_plaintext_server_is_not_retried(tmp_path, certs):
    """WRONG_VERSION_NUMBER, gRPC's own words for it, was retried to the deadline."""
    with running_server(tmp_path) as ts, HashmatchClient(ts.target, **_access(certs, None)) as c:
        error = _failed_fast(c.list_hash_lists)
    assert "WRONG_VERSION_NUMBER" in error.details()
    assert "TLS mismatch?" in error.connection_hint


@contextmanager
def _listening(handle) -> Iterator[str]:
    """A localhost listener that gives each connection to ``handle`` in a thread of its
    own (a slow one does not hold up the next accept)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        listener.close()


def _hang_up(conn: socket.socket) -> None:
    """End a connection as gRPC's "Socket closed": an end of stream (FIN), then wait for
    the client to close. A close with the client's first bytes unread sends a reset
    instead, which gRPC words "Connection reset by peer": when the accepting thread
    lagged (a loaded machine), the client's ClientHello had arrived first and
    test_a_server_that_hangs_up_on_everyone_is_still_retried_until_the_deadline[tls]
    failed on its "Socket closed"."""
    with conn:
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5)
            while conn.recv(65536):
                pass
        except OSError:
            pass


@contextmanager
def _hangs_up_on_everyone() -> Iterator[str]:
    """A listener that hangs up on every connection at once: a proxy whose backend is
    down, gRPC's "Socket closed" without any TLS question."""
    with _listening(_hang_up) as target:
        yield target


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_server_that_hangs_up_on_everyone_is_still_retried_until_the_deadline(certs, tls):
    access = _access(certs, "client") if tls else {}
    with (
        _hangs_up_on_everyone() as target,
        HashmatchClient(target, **{**access, "timeout": 2}) as c,
    ):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            c.list_hash_lists()
        took = time.monotonic() - started
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "Socket closed" in failed.value.details()
    assert took > 1.5, f"{took:.1f} s: given up as a TLS refusal"
    assert REFUSED not in failed.value.connection_hint
    assert SPEAKS_TLS not in failed.value.connection_hint


def test_the_cli_prints_the_librarys_hint(mutual, certs):
    key, cert = certs["other"]
    result = CliRunner().invoke(
        cli, ["remote", "--server", mutual.target, "--ca", certs["server"][1], "--cert", cert,
              "--key", key, "--timeout", str(TIMEOUT), "lists"],
    )  # fmt: skip
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output, result.output
    assert REFUSED in result.output
    assert result.output.count(REFUSED) == 1


def test_a_server_that_is_down_is_still_retried_until_the_deadline():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]  # closed below: nothing listens there
    with HashmatchClient(f"127.0.0.1:{port}", timeout=1.5) as c:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            c.list_hash_lists()
        took = time.monotonic() - started
    assert took > 1.0 and failed.value.connection_hint == ""


@pytest.mark.parametrize("spelling", ["dns:{host}:{port}", "ipv4:{host}:{port}"])
def test_other_spellings_of_the_servers_address_are_asked_too(mutual, spelling):
    """gRPC takes ``dns:HOST:PORT`` and ``ipv4:HOST:PORT`` as well as ``HOST:PORT``; the
    check parsed only the last (and ``dns:///``): for the others it asked a host named
    ``dns:127.0.0.1`` (a DNS lookup of a name that is none) and the call was retried for
    its whole deadline as a server that is down, without the hint."""
    host, _, port = mutual.target.rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host
    with HashmatchClient(spelling.format(host=host, port=port), timeout=TIMEOUT) as c:
        error = _failed_fast(c.list_hash_lists)
    assert SPEAKS_TLS in error.connection_hint


@contextmanager
def _mutual_tls_server(
    certs, presents: str, version: ssl.TLSVersion | None = None
) -> Iterator[tuple[str, list[tuple[str, bool]]]]:
    """A Python ``ssl`` server presenting ``presents``'s certificate and requiring a
    client certificate signed by ``client``'s (a refused one gets OpenSSL's alert after
    the client's Finished under TLS 1.3). Yields its target and, per handshake, (TLS
    version, whether a client certificate came)."""
    key, cert = certs[presents]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs["client"][1])
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    if version is not None:
        context.minimum_version = context.maximum_version = version
    seen: list[tuple[str, bool]] = []

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                seen.append((tls.version() or "", bool(tls.getpeercert())))
                tls.sendall(b"\0" * 9)  # as gRPC's HTTP/2 settings: the client is taken
        except OSError:  # refused (its alert is sent) or the client gave up
            conn.close()

    with _listening(handle) as target:
        yield target, seen


#: what a call fails with when the server hangs up on it while connecting: the client
#: then asks the server (asked directly below, the server being a Python one)
SOCKET_CLOSED_DETAILS = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:{}: Socket closed"
)


def test_the_client_certificate_goes_to_no_server_it_does_not_trust(certs):
    """The check offered the client's certificate over TLS 1.2, in cleartext, to any
    server (CERT_NONE): whoever could make a call fail "Socket closed" read the
    client's identity. A server whose certificate the client's CA did not sign (here:
    one requiring client certificates, trusting this one) must never get it."""
    with (
        _mutual_tls_server(certs, presents="other") as (target, seen),
        HashmatchClient(target, **_access(certs, "client")) as c,
    ):
        hint, _ = c.connection_hint(SOCKET_CLOSED_DETAILS.format(target))
    assert not any(got for _, got in seen), seen
    assert REFUSED not in hint and NO_CERTIFICATE not in hint


def test_the_client_certificate_is_offered_over_tls_1_3_only(certs):
    """A server the client trusts still gets the certificate only encrypted: one that
    speaks TLS 1.2 alone is not offered it (no answer: the call's own error stands)."""
    key, cert = certs["client"]
    roots = Path(certs["server"][1]).read_bytes()
    with _mutual_tls_server(certs, "server", ssl.TLSVersion.TLSv1_2) as (target, seen):
        host, _, port = target.rpartition(":")
        assert not refuses_client_certificate(host, int(port), (cert, key), roots=roots)
    assert not any(got for _, got in seen), seen


def test_a_tls_1_3_refusal_of_the_client_certificate_is_still_named(certs):
    """Over TLS 1.3 the server refuses after the client's Finished: OpenSSL's alert
    (here "unknown CA") is read after the handshake; the right certificate is taken."""
    with _mutual_tls_server(certs, presents="server") as (target, seen):
        with HashmatchClient(target, **_access(certs, "other")) as c:
            details = SOCKET_CLOSED_DETAILS.format(target)
            assert c.connection_hint(details) == (CERTIFICATE_REFUSED_HINT, True)
        with HashmatchClient(target, **_access(certs, "client")) as c:
            assert not c.connection_hint(details)[1]
    assert ("TLSv1.3", True) in seen


@contextmanager
def _stalls_after_the_first() -> Iterator[str]:
    """A listener that hangs up on its first connection (the call fails "Socket
    closed", so the client asks) and then accepts connections and never answers: a
    hung server, or one behind a black-holing proxy."""
    first = threading.Event()
    held: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        if not first.is_set():
            first.set()
            _hang_up(conn)
        else:
            held.append(conn)  # open, silent, until the test ends

    with _listening(handle) as target:
        yield target
    for conn in held:
        conn.close()


#: the bound on a timeout=1 call that asks a stalled server: the least a probe that does
#: not keep to the call's deadline takes (the old probes waited 2 s per handshake, from
#: the call's first failure, whatever its deadline: 2.2 s plaintext, 4.3 s TLS measured),
#: so no load makes that pass; a call that keeps to it ends 0.1-0.3 s past its 1 s on a
#: 2-core host at load 10, up to 0.45 s at load 12, all well inside
PROBE_OWN_WAIT = 2.0


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_asking_the_server_keeps_to_the_calls_deadline(certs, tls):
    """Each probe handshake waited 2 s of its own (up to three, and certificate_hint's
    two more), so a timeout=1 call to a server that stalls TLS took about 5 s."""
    access = {**(_access(certs, "client") if tls else {}), "timeout": 1}
    with _stalls_after_the_first() as target, HashmatchClient(target, **access) as c:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            c.list_hash_lists()
        took = time.monotonic() - started
    assert took < PROBE_OWN_WAIT, f"{took:.2f} s for a 1 s call"


def test_the_asyncio_client_keeps_to_the_deadline_too(certs):
    async def call() -> float:
        async with AsyncHashmatchClient(target, **{**_access(certs, "client"), "timeout": 1}) as c:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError):
                await c.stats()
            return time.monotonic() - started

    with _stalls_after_the_first() as target:
        took = asyncio.run(call())
    assert took < PROBE_OWN_WAIT, f"{took:.2f} s for a 1 s call"
