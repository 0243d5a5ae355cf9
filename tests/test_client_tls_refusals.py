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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from click.testing import CliRunner

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
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
