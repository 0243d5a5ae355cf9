"""Run a real hashmatch server in this process on an ephemeral localhost port.

For tests (ours and users' integration tests): real gRPC over a real socket,
real engine in a temporary data directory; only the address is fixed to
127.0.0.1 with port 0 (the OS picks a free one).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashmatch.server.app import HashmatchServer, open_engine
from hashmatch.server.auth import TokenAuth, tenant_entry
from hashmatch.server.client import HashmatchClient
from hashmatch.server.config import ServerConfig


@dataclass
class TestServer:
    server: HashmatchServer
    tokens: dict[str, str] = field(default_factory=dict)  # tenant -> plaintext token
    clients: list[HashmatchClient] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def engine(self):
        return self.server.host.engine

    def client(self, tenant: str | None = None, **options: Any) -> HashmatchClient:
        token = self.tokens.get(tenant) if tenant else None
        client = HashmatchClient(self.target, token=token, **options)
        self.clients.append(client)
        return client


def held_engine(gate: threading.Event, wait: float = 30.0) -> Callable[[ServerConfig], Any]:
    """An engine factory that waits for ``gate`` (a slow index load, at most ``wait``
    seconds) and then opens the real engine: for testing health, retries and drain
    while the index loads."""

    def factory(config: ServerConfig) -> Any:
        gate.wait(wait)
        return open_engine(config)

    return factory


@contextmanager
def running_server(
    data_dir: str | Path,
    *,
    tenants: Mapping[str, tuple[Sequence[str], bool]] | None = None,
    engine_factory: Callable[[ServerConfig], Any] = open_engine,
    wait: bool = True,
    extra_interceptors: Sequence[Any] = (),
    **settings: Any,
) -> Iterator[TestServer]:
    """``tenants``: name -> (roles, all_lists). None = explicit no-auth mode.
    ``extra_interceptors``: ``grpc.ServerInterceptor``s around every call."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens: dict[str, str] = {}
    auth = None
    if tenants is not None:
        text = ""
        for name, (roles, all_lists) in tenants.items():
            tokens[name] = secrets.token_urlsafe(16)
            text += tenant_entry(name, tokens[name], roles, all_lists=all_lists) + "\n"
        (data_dir / "auth.toml").write_text(text)
        auth = TokenAuth.from_file(data_dir / "auth.toml")
    values = {
        "listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "metrics_port": -1,
        "insecure_no_auth": tenants is None,
        "drain_seconds": 5.0,
        **settings,
    }
    config = ServerConfig().with_overrides(values).validate()
    server = HashmatchServer(
        config, auth=auth, engine_factory=engine_factory, extra_interceptors=extra_interceptors
    )
    server.start()
    handle = TestServer(server, tokens)
    try:
        if wait and not server.wait_ready(60):
            raise RuntimeError(f"server did not load its index: {server.host.load_error}")
        yield handle
    finally:
        for client in handle.clients:
            client.close()
        server.stop(grace=2.0)


def self_signed_cert(directory: Path, name: str) -> tuple[str, str]:
    """(key path, cert path) of a one-day self-signed certificate for localhost and
    127.0.0.1, made with the ``openssl`` CLI (tests of TLS setups skip without it)."""
    import subprocess

    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(key), str(cert)


def expired_cert(directory: Path, name: str) -> tuple[str, str]:
    """(key path, cert path) of a self-signed certificate for localhost and 127.0.0.1
    that was valid on 2020-01-01 only: ``openssl ca`` sets the dates (``openssl req
    -x509`` before OpenSSL 3.4 cannot start one in the past)."""
    import subprocess

    key, cert, csr = (directory / f"{name}{suffix}" for suffix in (".key", ".pem", ".csr"))
    ca_dir = directory / f"{name}-ca"
    ca_dir.mkdir()
    (ca_dir / "index.txt").write_text("")
    (ca_dir / "serial").write_text("01\n")
    (ca_dir / "ca.cnf").write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndatabase = {ca_dir}/index.txt\nnew_certs_dir = {ca_dir}\n"
        f"serial = {ca_dir}/serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n"
        "[p]\ncommonName = supplied\n"
    )
    for argv in (
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(csr), "-subj", f"/CN={name}",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        ["openssl", "ca", "-batch", "-config", str(ca_dir / "ca.cnf"), "-selfsign",
         "-keyfile", str(key), "-in", str(csr), "-out", str(cert), "-notext",
         "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"],
    ):  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)
    return str(key), str(cert)


def access_log_line(caplog: Any, method: str, n: int = 1, timeout: float = 5.0) -> dict:
    """The ``n``-th access-log line of ``method`` captured by pytest's ``caplog`` (the
    server writes it as the call's handler finishes, which can be after the client has
    its answer: waited for, up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(r.getMessage()) for r in caplog.records
                   if r.name == "hashmatch.access"]  # fmt: skip
        mine = [r for r in records if r["method"] == method]
        if len(mine) >= n:
            return mine[n - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line {n} for {method}: {records}")
        time.sleep(0.02)
