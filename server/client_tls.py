"""The client's TLS files, checked when a client is made.

Why: grpcio takes whatever bytes it is given and fails only at the first connection,
with "Failed to create security handshaker" (and C-core log lines on stderr), which
the clients retried as a server that is down until the call's deadline (30 s by
default): a key that is not the certificate's, a CA file that holds a key, a
certificate and key given the wrong way round all read like an unreachable server.
The server checks its own TLS files at start-up the same way (``app.check_tls_files``).
Standard library only.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path


class TLSFileError(ValueError):
    """A TLS file (or PEM text) a client was given that gRPC could not use.

    ``argument``: the client's argument (``root_certificates``, ``client_cert``,
    ``client_key``), ``source``: the path it was read from ("" for PEM given as text
    or bytes), ``problem``: what is wrong; ``key_of``: for a key that is not the
    certificate's, the certificate's path ("" when given as PEM). The CLI names its
    own options instead (``--ca``, ``--cert``, ``--key``: :meth:`described`)."""

    def __init__(self, argument: str, source: str, problem: str, key_of: str | None = None):
        self.argument, self.source, self.problem, self.key_of = argument, source, problem, key_of
        super().__init__(self.described({}))

    def described(self, names: dict[str, str]) -> str:
        """The message, each argument called by its name in ``names`` (else its own)."""
        problem = self.problem
        if self.key_of is not None:
            cert = names.get("client_cert", "client_cert")
            problem = f"not the private key of {cert} {self.key_of}".rstrip()
        name = names.get(self.argument, self.argument)
        return f"{name} {self.source}: {problem}" if self.source else f"{name}: {problem}"


def source_of(value: object) -> str:
    """The path a PEM argument was read from, or "" for PEM bytes or text."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "-----BEGIN " not in value:
        return value
    return ""


def check_client_tls(
    roots: bytes | None,
    chain: tuple[bytes, bytes] | None,
    sources: dict[str, str],
) -> None:
    """Raise :class:`TLSFileError` when ``roots`` (CA certificates, PEM) hold no
    certificate, or ``chain`` (client certificate, key) is not a PEM certificate and
    the unencrypted PEM private key of it. ``sources``: each argument's path ("" if
    none), for the message."""
    if roots is None and chain is None:
        return
    try:
        folder = tempfile.TemporaryDirectory()  # mode 0700: the key stays private
    except OSError:  # no room for the files: gRPC's own error will have to do
        return
    with folder:
        files = {}
        pems = {"root_certificates": roots, "client_cert": chain and chain[0]}
        pems["client_key"] = chain and chain[1]
        try:
            for argument, pem in pems.items():
                if pem is not None:
                    files[argument] = Path(folder.name, f"{argument}.pem")
                    files[argument].write_bytes(pem)
        except OSError:
            return
        for argument in ("root_certificates", "client_cert"):
            if argument in files:
                _check_certificates(argument, files[argument], sources.get(argument, ""))
        if "client_key" in files:
            _check_key(files["client_cert"], files["client_key"], sources)


def _check_certificates(argument: str, path: Path, source: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        problem = f"no PEM certificate in it ({exc.reason or exc})"
        if b"PRIVATE KEY-----" in path.read_bytes():
            problem += ", a private key instead"
            if argument == "client_cert":
                problem += ": certificate and key swapped?"
        raise TLSFileError(argument, source, problem) from None


def _check_key(cert: Path, key: Path, sources: dict[str, str]) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            str(cert), str(key), password=_no_password
        )
    except ssl.SSLError as exc:
        source = sources.get("client_key", "")
        if exc.reason == "KEY_VALUES_MISMATCH":
            mismatch = sources.get("client_cert", "")
            raise TLSFileError("client_key", source, "", key_of=mismatch) from None
        problem = f"not an unencrypted PEM private key ({exc.reason or exc})"
        raise TLSFileError("client_key", source, problem) from None


def _no_password() -> bytes:
    """An encrypted key fails (grpcio cannot use one) instead of prompting."""
    return b""
