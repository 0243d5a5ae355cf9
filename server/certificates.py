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
from collections.abc import Iterator


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


def served_dates(host: str, port: int, timeout: float = 2.0) -> tuple[float, float] | None:
    """(not before, not after) of the certificate a TLS server at ``host:port`` presents,
    unverified (the point is to see one the client refuses); None when no address of
    ``host`` completes a TLS handshake. Every address is tried: gRPC reports only its
    last one's error ("[::1]: Connection refused" for ``localhost``) while the server
    answered on another."""
    for tls in _handshakes(host, port, _unverified(), timeout):
        der = None if isinstance(tls, Exception) else tls.getpeercert(binary_form=True)
        if der:
            return _der_dates(der)
    return None


def served_trust_error(
    host: str, port: int, cadata: bytes | None = None, timeout: float = 2.0
) -> str | None:
    """Why the certificate a TLS server at ``host:port`` presents fails verification
    against ``cadata`` (PEM; None = the system's roots, as gRPC's default), e.g.
    "unable to get local issuer certificate"; None when it verifies or no address
    completes a handshake. Every address is tried, as in :func:`served_dates`: a
    self-signed certificate read as "[::1]: Connection refused" for ``localhost``."""
    context = ssl.create_default_context(cadata=cadata.decode() if cadata else None)
    for tls in _handshakes(host, port, context, timeout):
        if isinstance(tls, ssl.SSLCertVerificationError):
            return tls.verify_message or str(tls)
        return None
    return None


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TLS handshake (the certificate unverified) completes with a server at
    ``host:port``, on any of its addresses.

    Why: a plaintext gRPC client that a TLS server hangs up on hears only "Socket
    closed", as it would from a server going away; this asks the server itself."""
    handshakes = _handshakes(host, port, _unverified(), timeout)
    return any(not isinstance(tls, Exception) for tls in handshakes)


def refuses_client_certificate(
    host: str, port: int, chain: tuple[str, str] | None, timeout: float = 2.0
) -> bool:
    """Whether the TLS server at ``host:port`` ends the handshake on the client
    certificate ``chain`` ((cert file, key file); None: none): a mutual-TLS server
    that requires one, or does not trust this one.

    Why: over TLS 1.3 the client has finished its handshake before the server checks
    its certificate, so gRPC reports the refusal as "Socket closed", as it would a
    server going away (or a TLS proxy whose backend is down). Over TLS 1.2 the check
    comes before the server's Finished: a TLS server that hangs up inside the
    handshake, after the client's certificate, refused it; one that completes it did
    not. A listener that hangs up on everyone (a proxy whose backend is down) is no
    TLS server: it hangs up on a handshake without the certificate too."""
    if not speaks_tls(host, port, timeout):
        return False
    context = _unverified()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        if chain is not None:
            context.load_cert_chain(*chain)
    except (ssl.SSLError, OSError):  # a key that is not the certificate's: gRPC says so
        return False
    context.set_alpn_protocols(["h2"])
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for *_, address in addresses:
        try:
            raw = socket.create_connection(address[:2], timeout=timeout)
        except OSError:
            continue
        try:
            with raw, context.wrap_socket(raw, server_hostname=host):
                return False  # the handshake completed: the certificate was accepted
        except ssl.SSLError as exc:
            # the server hung up (gRPC's way) or sent a certificate alert mid-handshake
            reason = exc.reason or ""
            hung_up = isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING"
            return hung_up or (
                "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)
            )
        except OSError:
            continue
    return False


def _unverified() -> ssl.SSLContext:
    """A client context that takes any server certificate: these checks look at what
    the server does, not whether it is trusted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _handshakes(
    host: str, port: int, context: ssl.SSLContext, timeout: float
) -> Iterator[ssl.SSLSocket | ssl.SSLCertVerificationError]:
    """Per address of ``host`` (all of them: gRPC reports only its last one's error), a
    completed TLS handshake (the socket, open while the caller holds it) or the
    certificate verification error; addresses that refuse or fail otherwise are
    skipped."""
    context.set_alpn_protocols(["h2"])
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return
    for *_, address in addresses:
        try:
            with (
                socket.create_connection(address[:2], timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                yield tls
        except ssl.SSLCertVerificationError as exc:
            yield exc
            return
        except (OSError, ValueError):
            continue


def _der_dates(der: bytes) -> tuple[float, float] | None:
    """The dates of a DER certificate (through a PEM file: what ``pem_dates`` reads)."""
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ssl.DER_cert_to_PEM_cert(der))
        return pem_dates(path)
    finally:
        os.unlink(path)


def utc(seconds: float) -> str:
    """A certificate date as operators read it: ``2026-01-02 00:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
