"""A client given TLS files gRPC cannot use says which file and why when it is made.

Before, grpcio took any bytes and failed each connection with "Failed to create
security handshaker", which the clients retried as a server that is down until the
call's deadline (30 s by default): a key that is not the certificate's, a key given as
the CA, certificate and key swapped all read like an unreachable server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.server.client_tls import TLSFileError
from hashmatch.server.testing import running_server, self_signed_cert

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

# nothing listens there: no client made here may get as far as connecting
NOWHERE = "127.0.0.1:9"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("certs")
    return {name: self_signed_cert(folder, name) for name in ("ca", "client", "other")}


def _made(**tls) -> HashmatchClient:
    return HashmatchClient(NOWHERE, token="t", timeout=5, **tls)


def test_a_key_that_is_not_the_certificates_is_named(certs):
    ca, cert, wrong_key = certs["ca"][1], certs["client"][1], certs["other"][0]
    with pytest.raises(TLSFileError) as caught:
        _made(root_certificates=ca, client_cert=cert, client_key=wrong_key)
    assert str(caught.value) == f"client_key {wrong_key}: not the private key of client_cert {cert}"


def test_pem_given_as_bytes_or_text_is_checked_too(certs):
    key, cert = certs["client"]
    wrong_key = Path(certs["other"][0]).read_bytes()
    with pytest.raises(TLSFileError, match=r"^client_key: not the private key of client_cert$"):
        _made(root_certificates=Path(cert).read_bytes(), client_cert=Path(cert).read_text(),
              client_key=wrong_key)  # fmt: skip
    _made(root_certificates=Path(cert).read_bytes(), client_cert=Path(cert).read_text(),
          client_key=Path(key).read_bytes()).close()  # fmt: skip


def test_a_key_given_as_the_ca_is_named(certs):
    key = certs["ca"][0]
    with pytest.raises(TLSFileError, match=rf"^root_certificates {key}: no PEM certificate in it"):
        _made(root_certificates=key)


def test_certificate_and_key_swapped_are_named(certs):
    key, cert = certs["client"]
    with pytest.raises(TLSFileError, match=r"client_cert .*: certificate and key swapped\?$"):
        _made(root_certificates=certs["ca"][1], client_cert=key, client_key=cert)


def test_usable_files_make_a_client(certs):
    key, cert = certs["client"]
    _made(root_certificates=certs["ca"][1], client_cert=cert, client_key=key).close()
    _made(root_certificates=certs["ca"][1]).close()


def test_the_asyncio_client_checks_them_alike(certs):
    async def make() -> None:
        AsyncHashmatchClient(
            NOWHERE, root_certificates=certs["ca"][1], client_cert=certs["client"][1],
            client_key=certs["other"][0],
        )  # fmt: skip

    with pytest.raises(TLSFileError, match="not the private key of client_cert"):
        asyncio.run(make())


def test_the_cli_names_its_options_at_once(certs):
    ca, cert, wrong_key = certs["ca"][1], certs["client"][1], certs["other"][0]
    started = time.monotonic()
    result = CliRunner().invoke(cli, [
        "remote", "--server", NOWHERE, "--token", "t", "--timeout", "5",
        "--ca", ca, "--cert", cert, "--key", wrong_key, "lists",
    ])  # fmt: skip
    assert result.exit_code == 1
    assert result.output == f"Error: --key {wrong_key}: not the private key of --cert {cert}\n"
    assert time.monotonic() - started < 2  # not retried as a server that is down


def test_the_cli_names_a_file_from_the_environment_by_its_variable(certs):
    """$HASHMATCH_KEY's file was named "--key PATH", an option not on the command line."""
    ca, cert, wrong_key = certs["ca"][1], certs["client"][1], certs["other"][0]
    env = {"HASHMATCH_CA": ca, "HASHMATCH_CERT": cert, "HASHMATCH_KEY": wrong_key}
    result = CliRunner().invoke(cli, [
        "remote", "--server", NOWHERE, "--token", "t", "--timeout", "5", "lists",
    ], env=env)  # fmt: skip
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --key ($HASHMATCH_KEY) {wrong_key}: not the private key of --cert"
        f" ($HASHMATCH_CERT) {cert}\n"
    )


CLI = "from hashmatch.server.entry import main; main()"


@pytest.mark.parametrize("verbosity", [None, "INFO"])
def test_the_cli_prints_its_error_without_grpcs_handshake_log(tmp_path, certs, verbosity):
    """gRPC's C core logged each failed handshake at INFO on stderr ("I1207 ...
    ssl_transport_security.cc:2563] Handshake failed ..."), two such lines before the
    verb's own error and hint; an operator who asks for them (GRPC_VERBOSITY) still
    gets them."""
    key, cert = certs["ca"]
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    if verbosity:
        env["GRPC_VERBOSITY"] = verbosity
    with running_server(tmp_path / "data", tls_cert=cert, tls_key=key) as ts:
        run = subprocess.run(
            [sys.executable, "-c", CLI, "remote", "--server", ts.target, "--tls",
             "--token", "t", "--timeout", "10", "lists"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1
    assert "give the CA that signed it with --ca" in run.stderr
    logged = [line for line in run.stderr.splitlines() if "ssl_transport_security" in line]
    assert bool(logged) == (verbosity == "INFO"), run.stderr
    if not verbosity:
        assert run.stderr.startswith("Error: UNAVAILABLE: "), run.stderr
