"""A server reached by an address its certificate does not name: the hint says which
names it holds and how to check for one (``server_name=``, ``remote --server-name``).

Before, the hint said "does not verify here: IP address mismatch, ...; give the CA
that signed it with --ca" to a caller who had given that CA, and ``remote`` had no
way to check the certificate for another name than the host connected to.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import grpc
import pytest
from click.testing import CliRunner

from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.server.testing import running_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

NAME = "hashmatch.internal"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A TLS server whose certificate names only NAME (a DNS name, no address)."""
    folder = tmp_path_factory.mktemp("certs")
    key, cert = folder / "server.key", folder / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}",
         "-addext", f"subjectAltName=DNS:{NAME}"],
        check=True, capture_output=True,
    )  # fmt: skip
    tenants = {"ops": (["match", "admin", "export"], True)}
    data = tmp_path_factory.mktemp("data")
    with running_server(data, tenants=tenants, tls_cert=str(cert), tls_key=str(key)) as ts:
        yield ts, str(cert)


def test_the_hint_names_the_certificates_names_not_the_ca(served):
    ts, cert = served
    client = HashmatchClient(ts.target, token=ts.tokens["ops"], root_certificates=cert, timeout=20)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        client.list_hash_lists()
    assert time.monotonic() - started < 10
    hint = caught.value.connection_hint
    assert f"not for 127.0.0.1 (it names {NAME})" in hint, hint
    assert "--server-name NAME" in hint and "give the CA" not in hint
    client.close()


def test_remote_checks_the_certificate_for_server_name(served):
    ts, cert = served
    result = CliRunner().invoke(cli, [
        "remote", "--server", ts.target, "--token", ts.tokens["ops"], "--ca", cert,
        "--server-name", NAME, "stats",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"total_signals": 0' in result.output


def test_scan_rescan_and_mirror_take_server_name_too(served, tmp_path):
    """The hint tells a caller whose certificate names another host to check it for
    one of its names; only remote could: scan/rescan --server and mirror had no
    --server-name (usage error)."""
    ts, cert = served
    ts.engine.store.create_list("shared", exist_ok=True)
    ts.engine.ingest([SignalRecord(signal_type="md5", hash_hex="0" * 32)], list_name="shared")
    access = ["--server", ts.target, "--token", ts.tokens["ops"], "--ca", cert,
              "--server-name", NAME]  # fmt: skip
    files = tmp_path / "files"
    files.mkdir()
    (files / "note.txt").write_text("hello\n")
    data = str(tmp_path / "scan-data")
    runner = CliRunner()
    for argv in (
        ["scan", str(files), "--types", "md5", "--data-dir", data, "--out", "-", *access],
        ["rescan", "--data-dir", data, "--out", "-", *access],
        ["mirror", "--prefix", "hub/", "--data-dir", str(tmp_path / "mirror"), *access],
    ):
        result = runner.invoke(cli, argv)
        assert result.exit_code == 0, (argv[0], result.output)
    listed = runner.invoke(cli, ["lists", "ls", "--data-dir", str(tmp_path / "mirror")])
    assert "hub/shared" in listed.output, listed.output
