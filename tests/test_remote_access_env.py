"""The client verbs' --token-file, --ca, --cert and --key read $HASHMATCH_TOKEN_FILE,
$HASHMATCH_CA, $HASHMATCH_CERT and $HASHMATCH_KEY, as --server and --token read
$HASHMATCH_SERVER and $HASHMATCH_TOKEN.

Why: against a mutual-TLS server every `remote` call (a probe, a cron line, a shell
session) needed the three files on its command line.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
from click.testing import CliRunner

from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli
from hashmatch.server.config import from_env
from hashmatch.server.testing import running_server, self_signed_cert

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def mutual(tmp_path_factory):
    """A mutual-TLS server, its files and a token file of its admin."""
    folder = tmp_path_factory.mktemp("certs")
    certs = {name: self_signed_cert(folder, name) for name in ("server", "client")}
    key, cert = certs["server"]
    data = tmp_path_factory.mktemp("mutual")
    tenants = {"ops": (["match", "write", "admin", "export"], True)}
    with running_server(
        data, tenants=tenants, tls_cert=cert, tls_key=key, tls_client_ca=certs["client"][1]
    ) as ts:
        token_file = folder / "ops.token"
        token_file.write_text(ts.tokens["ops"] + "\n")
        yield ts, certs, str(token_file)


def _env(ts, certs, token_file: str) -> dict[str, str]:
    key, cert = certs["client"]
    return {
        "HASHMATCH_SERVER": f"localhost:{ts.server.port}",
        "HASHMATCH_TOKEN": "",
        "HASHMATCH_TOKEN_FILE": token_file,
        "HASHMATCH_CA": certs["server"][1],
        "HASHMATCH_CERT": cert,
        "HASHMATCH_KEY": key,
    }


def test_remote_reaches_a_mutual_tls_server_from_the_environment_alone(mutual):
    ts, certs, token_file = mutual
    result = CliRunner().invoke(cli, ["remote", "stats"], env=_env(ts, certs, token_file))
    assert result.exit_code == 0, result.output
    assert '"total_signals": 0' in result.output


def test_a_token_on_the_command_line_beats_the_environments_token_file(mutual):
    ts, certs, token_file = mutual
    env = _env(ts, certs, token_file)
    result = CliRunner().invoke(cli, ["remote", "--token", "not-a-token", "stats"], env=env)
    assert result.exit_code == 1
    assert "UNAUTHENTICATED: unknown or revoked token" in result.output  # not a usage error


def test_scan_and_mirror_reach_it_from_the_environment_too(mutual, tmp_path):
    """84b5ca3 said scan/rescan --server and mirror read the four variables too; only
    remote was tried. Each reaches the mutual-TLS server with --server alone (the old
    code connected without TLS)."""
    ts, certs, token_file = mutual
    env = _env(ts, certs, token_file)
    server = env.pop("HASHMATCH_SERVER")  # read by remote only: the others take --server
    client = CliRunner()
    files = tmp_path / "files"
    files.mkdir()
    (files / "note.txt").write_bytes(b"a shared note\n")
    md5 = hashlib.md5(b"a shared note\n").hexdigest()
    ts.engine.ingest([SignalRecord(signal_type="md5", hash_hex=md5)], list_name="shared")
    scan_data, report_file = tmp_path / "scan-data", tmp_path / "report.jsonl"
    scan = ["scan", str(files), "--types", "md5", "--server", server,
            "--data-dir", str(scan_data), "--out", str(report_file)]  # fmt: skip
    result = client.invoke(cli, scan, env=env)
    assert result.exit_code == 0, result.output
    report = report_file.read_text()
    assert '"list": "shared"' in report, report  # matched through the server
    rescan = ["rescan", "--server", server, "--data-dir", str(scan_data), "--out", "-"]
    result = client.invoke(cli, rescan, env=env)
    assert result.exit_code == 0, result.output
    mirror = ["mirror", "--server", server, "--prefix", "hub/",
              "--data-dir", str(tmp_path / "mirror-data")]  # fmt: skip
    result = client.invoke(cli, mirror, env=env)
    assert result.exit_code == 0, result.output
    listed = client.invoke(cli, ["lists", "ls", "--data-dir", str(tmp_path / "mirror-data")])
    assert "hub/shared" in listed.output, listed.output


def test_serve_allows_them_in_its_environment():
    """serve refuses HASHMATCH_* variables that are not settings (a typo): not these."""
    names = ("HASHMATCH_TOKEN_FILE", "HASHMATCH_CA", "HASHMATCH_CERT", "HASHMATCH_KEY")
    assert from_env(dict.fromkeys(names, "x")) == {}
