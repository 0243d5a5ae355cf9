"""Certificate validity dates: the server's start-up warning about its own files, and
the client's hint when a TLS connection fails.

Why here: both sides must read the same dates the same way, and the client must not
import the server (``app``) to do so. Standard library only.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def pem_dates(path: str) -> tuple[float, float] | None:
    """(not before, not after) of the first certificate in a PEM file, as Unix times;
    None when they cannot be read (the stdlib's one reader of them is private)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        info = decode(path)
        not_before, not_after = (
            ssl.cert_time_to_seconds(info[k]) for k in ("notBefore", "notAfter")
        )
        return not_before, not_after
    except (ssl.SSLError, OSError, KeyError, ValueError):
        return None


def served_dates(host: str, port: int, deadline: float | None = None) -> tuple[float, float] | None:
    """(not before, not after) of the certificate a TLS server at ``host:port`` presents,
    unverified (the point is to see one the client refuses); None when no address of
    ``host`` completes a TLS handshake. Every address is tried: gRPC reports only its
    last one's error ("[::1]: Connection refused" for ``localhost``) while the server
    answered on another. ``deadline``: see :func:`probe_timeout`."""
    for tls in _handshakes(host, port, _unverified(), deadline):
        der = None if isinstance(tls, Exception) else tls.getpeercert(binary_form=True)
        if der:
            return _der_dates(der)
    return None


#: OpenSSL's verify codes of a certificate that does not name the host checked
#: (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH)
NAME_MISMATCH = frozenset({62, 64})


def served_trust_error(
    host: str,
    port: int,
    cadata: bytes | None = None,
    deadline: float | None = None,
    server_name: str | None = None,
) -> ssl.SSLCertVerificationError | None:
    """Why the certificate a TLS server at ``host:port`` presents fails verification
    against ``cadata`` (PEM; None = the system's roots, as gRPC's default) for
    ``server_name`` (else ``host``: the name gRPC checks), its ``verify_message`` e.g.
    "unable to get local issuer certificate", its ``verify_code`` in
    :data:`NAME_MISMATCH` for a certificate of another name; None when it verifies or
    no address completes a handshake. Every address is tried, as in
    :func:`served_dates`: a self-signed certificate read as "[::1]: Connection
    refused" for ``localhost``."""
    context = ssl.create_default_context(cadata=cadata.decode() if cadata else None)
    for tls in _handshakes(host, port, context, deadline, server_name):
        if isinstance(tls, ssl.SSLCertVerificationError):
            return tls
        return None
    return None


def served_names(host: str, port: int, deadline: float | None = None) -> list[str]:
    """The names (DNS and IP subject alternative names) of the certificate the TLS
    server at ``host:port`` presents, read unverified; [] when it cannot be read."""
    for tls in _handshakes(host, port, _unverified(), deadline):
        der = None if isinstance(tls, Exception) else tls.getpeercert(binary_form=True)
        if der:
            info = _der_info(der) or {}
            return [name for kind, name in info.get("subjectAltName", ()) if kind in _NAMES]
    return []


_NAMES = frozenset({"DNS", "IP Address"})


PROBE_SECONDS = 2.0  # one probe handshake's wait at most


def probe_timeout(deadline: float | None, most: float = PROBE_SECONDS) -> float | None:
    """Seconds one probe connection may wait: ``most``, or less when ``deadline``
    (monotonic; None = none) comes sooner; None when it has passed (no probe then).

    Why: each probe took 2 s of its own whatever the call's deadline, so a 1 s call to
    a server that accepts connections and stalls its handshakes took 5 s."""
    if deadline is None:
        return most
    left = deadline - time.monotonic()
    return min(most, left) if left > 0.01 else None


def speaks_tls(host: str, port: int, deadline: float | None = None) -> bool:
    """Whether a TLS handshake (the certificate unverified, no client certificate)
    completes with a server at ``host:port``, on any of its addresses.

    Why: a plaintext gRPC client that a TLS server hangs up on hears only "Socket
    closed", as it would from a server going away; this asks the server itself."""
    handshakes = _handshakes(host, port, _unverified(), deadline)
    return any(not isinstance(tls, Exception) for tls in handshakes)


def requires_client_certificate(host: str, port: int, deadline: float | None = None) -> bool:
    """Whether the TLS server at ``host:port`` ends a TLS 1.2 handshake that offers no
    client certificate: a mutual-TLS server. No identity is sent (none is offered), so
    the server's certificate need not be verified. Over TLS 1.2 the server decides
    before its Finished, inside the handshake; a listener that hangs up on everyone (a
    proxy whose backend is down) is no TLS server: see :func:`speaks_tls`, asked first."""
    if not speaks_tls(host, port, deadline):
        return False
    context = _unverified()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    for outcome in _handshake_outcomes(host, port, context, deadline):
        if outcome is not None:
            return outcome == "refused"
    return False


def refuses_client_certificate(
    host: str,
    port: int,
    chain: tuple[str, str],
    *,
    roots: bytes | None,
    server_name: str | None = None,
    deadline: float | None = None,
) -> bool:
    """Whether the mutual-TLS server at ``host:port`` refuses the client certificate
    ``chain`` ((cert file, key file)).

    The certificate is only ever sent encrypted, to a server this client trusts: TLS
    1.3 (which encrypts it; TLS 1.2 sends it in cleartext), the server's certificate
    verified against ``roots`` (PEM; None = the system's) for ``server_name`` (or
    ``host``), as gRPC checks it. Why: the first version of this check offered it over
    TLS 1.2 to any server, unverified, so anyone on the path who could make a call fail
    "Socket closed" read the client's identity. A server this client does not trust,
    or one without TLS 1.3, is not asked (False): the call's own error stands.

    Over TLS 1.3 the server checks the certificate after the client's Finished: it
    refuses with an alert (OpenSSL: "certificate required", "unknown CA", "bad
    certificate") or, as gRPC's server does, by closing the connection without a byte,
    where one that accepts sends its HTTP/2 settings at once; so the answer is read
    after the handshake."""
    context = ssl.create_default_context(cadata=roots.decode() if roots else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(*chain)
    except (ssl.SSLError, OSError):  # a key that is not the certificate's: gRPC says so
        return False
    for outcome in _handshake_outcomes(host, port, context, deadline, server_name, read=True):
        if outcome is not None:
            return outcome == "refused"
    return False


def _handshake_outcomes(
    host: str,
    port: int,
    context: ssl.SSLContext,
    deadline: float | None,
    server_name: str | None = None,
    *,
    read: bool = False,
) -> Iterator[str | None]:
    """Per address of ``host``: "accepted" (the handshake completed, and with ``read``
    the server then sent data), "refused" (the server hung up or sent a certificate
    alert), "untrusted" (this client refused the server's certificate: nothing of the
    client's was sent) or None (no answer: refused connection, timeout, other error)."""
    context.set_alpn_protocols(["h2"])
    for raw in _connections(host, port, deadline):
        if raw is None:
            yield None
            continue
        try:
            with raw, context.wrap_socket(raw, server_hostname=server_name or host) as tls:
                if not read:
                    yield "accepted"
                    continue
                tls.settimeout(probe_timeout(deadline) or 0.01)
                yield "accepted" if tls.recv(1) else "refused"
        except ssl.SSLCertVerificationError:
            yield "untrusted"
            return
        except ssl.SSLError as exc:
            yield "refused" if _refusal(exc) else None
        except (OSError, ValueError):
            yield None


def _refusal(exc: ssl.SSLError) -> bool:
    """Whether ``exc`` is the server ending a handshake on the client's certificate (or
    on none): it hung up (gRPC's way) or sent a certificate alert, or the handshake
    failure alert OpenSSL sends a TLS 1.2 client that gave none. Not a protocol version
    alert (a server without TLS 1.2 says nothing about client certificates)."""
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return True
    return "ALERT" in reason and any(
        word in reason for word in ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE")
    )


def _unverified() -> ssl.SSLContext:
    """A client context that takes any server certificate, for checks that send no
    client certificate: they look at what the server does, not whether it is trusted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _handshakes(
    host: str,
    port: int,
    context: ssl.SSLContext,
    deadline: float | None,
    server_name: str | None = None,
) -> Iterator[ssl.SSLSocket | ssl.SSLCertVerificationError]:
    """Per address of ``host`` (all of them: gRPC reports only its last one's error), a
    completed TLS handshake (the socket, open while the caller holds it) or the
    certificate verification error; addresses that refuse or fail otherwise are
    skipped, and none is tried once ``deadline`` (monotonic) has passed. The server
    name sent and checked is ``server_name``, else ``host``."""
    context.set_alpn_protocols(["h2"])
    for raw in _connections(host, port, deadline):
        if raw is None:
            continue
        try:
            with raw, context.wrap_socket(raw, server_hostname=server_name or host) as tls:
                yield tls
        except ssl.SSLCertVerificationError as exc:
            yield exc
            return
        except (OSError, ValueError):
            continue


def _connections(host: str, port: int, deadline: float | None) -> Iterator[socket.socket | None]:
    """Per address of ``host``, a TCP connection (the caller closes it) or None where
    it was refused or failed; none is tried once ``deadline`` (monotonic) has passed,
    and each waits at most what is left of it (see :func:`probe_timeout`)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return
    for *_, address in addresses:
        timeout = probe_timeout(deadline)
        if timeout is None:
            return
        try:
            raw = socket.create_connection(address[:2], timeout=timeout)
        except OSError:
            raw = None
        yield raw


def _der_dates(der: bytes) -> tuple[float, float] | None:
    """The dates of a DER certificate (through a PEM file: what ``pem_dates`` reads)."""
    return _with_pem_file(der, pem_dates)


def _der_info(der: bytes) -> dict | None:
    """A DER certificate decoded as ``getpeercert()`` gives a verified one (the
    stdlib's private reader, through a PEM file); None when it cannot be read."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        return _with_pem_file(der, decode)
    except (ssl.SSLError, OSError, ValueError):
        return None


def _with_pem_file(der: bytes, read: Callable[[str], T]) -> T:
    """``read`` of a temporary PEM file holding the DER certificate ``der``: the
    stdlib reads certificates from files only."""
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ssl.DER_cert_to_PEM_cert(der))
        return read(path)
    finally:
        os.unlink(path)


def utc(seconds: float) -> str:
    """A certificate date as operators read it: ``2026-01-02 00:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
