"""A bearer token sent without TLS to an address off this machine is warned about once
(a ``PlaintextTokenWarning`` from the clients, one stderr line from the CLI); never for
localhost, 127.0.0.0/8, ::1 or a unix socket.

Why: a client given a token and no TLS setting sent it in the clear to any address
without a word: whoever reads the traffic can call the server as that tenant. Real
calls over real sockets: the server listens on every address, and is called at this
machine's own non-loopback address (which crosses no network, but is one).
"""

from __future__ import annotations

import asyncio
import socket
import warnings

import pytest
from click.testing import CliRunner

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.server.client_shared import PlaintextTokenWarning, local_target
from hashmatch.server.testing import running_server

READER = {"reader": (["match"], True)}
CLI_LINE = "hashmatch: warning: the token is sent to"


def _own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (a route out's source), or None."""
    for outside in ("10.255.255.255", "192.0.2.255", "198.51.100.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((outside, 9))  # no packet is sent: a route lookup
            except OSError:
                continue
            address = probe.getsockname()[0]
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    data = tmp_path_factory.mktemp("plaintext")
    with running_server(data, tenants=READER, listen="0.0.0.0:0") as ts:
        yield ts, f"{address}:{ts.server.port}"


def _plaintext_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PlaintextTokenWarning)]


def test_the_sync_client_warns_once_for_a_remote_plaintext_target(served):
    ts, remote = served
    token = ts.tokens["reader"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with HashmatchClient(remote, token=token, timeout=10) as client:
            client.list_hash_lists()
            client.list_hash_lists()
        found = _plaintext_warnings(caught)
        assert len(found) == 1, found  # once, at construction, not per call
        assert found[0].startswith(f"the token is sent to {remote} without TLS")
        assert caught[0].filename == __file__  # points at the line that made the client
        caught.clear()
        for target in (ts.target, f"localhost:{ts.server.port}"):
            with HashmatchClient(target, token=token, timeout=10) as client:
                client.list_hash_lists()
        with HashmatchClient(remote, timeout=10) as client:  # no token: nothing to leak
            client.health()
        assert _plaintext_warnings(caught) == []


def test_the_asyncio_client_warns_once_for_a_remote_plaintext_target(served):
    ts, remote = served
    token = ts.tokens["reader"]

    async def calls(target: str) -> None:
        async with AsyncHashmatchClient(target, token=token, timeout=10) as client:
            await client.list_hash_lists()
            await client.list_hash_lists()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(calls(remote))
        assert len(_plaintext_warnings(caught)) == 1
        caught.clear()
        asyncio.run(calls(ts.target))
        assert _plaintext_warnings(caught) == []


def test_no_warning_over_a_unix_socket(tmp_path):
    target = f"unix:{tmp_path}/hashmatch.sock"
    served = running_server(tmp_path / "d", tenants=READER, listen=target)
    with served as ts, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with HashmatchClient(target, token=ts.tokens["reader"], timeout=10) as client:
            client.list_hash_lists()
    assert _plaintext_warnings(caught) == []


def test_the_cli_says_it_once_on_stderr(served):
    ts, remote = served
    token = ts.tokens["reader"]
    result = CliRunner().invoke(cli, ["remote", "--server", remote, "--token", token, "lists"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count(CLI_LINE) == 1, result.stderr
    assert CLI_LINE not in result.stdout
    assert "PlaintextTokenWarning" not in result.stderr  # one line, not Python's two
    local = CliRunner().invoke(cli, ["remote", "--server", ts.target, "--token", token, "lists"])
    assert local.exit_code == 0 and CLI_LINE not in local.stderr, local.stderr


def test_which_targets_are_this_machine():
    for target in ("127.0.0.1:1", "127.3.2.1:1", "localhost:5", "LOCALHOST", "[::1]:5",
                   "unix:/run/h.sock", "unix-abstract:h", "dns:///localhost:5",
                   "dns://8.8.8.8/127.0.0.2:5", "ipv4:127.0.0.1:1,127.0.0.2:2",
                   "ipv6:[::1]:5"):  # fmt: skip
        assert local_target(target), target
    for target in ("10.0.0.1:5", "example.com:5", "[fd00::2]:5", "dns:///example.com:5",
                   "ipv4:127.0.0.1:1,10.0.0.1:2", "localhost.example.com:1"):  # fmt: skip
        assert not local_target(target), target


def test_the_warning_class_is_importable_from_the_client_module():
    """README tells pipelines to filter it with ``from hashmatch.server.client import
    PlaintextTokenWarning``: the public client module exports it (it lived in
    client_shared only)."""
    from hashmatch.server import client, client_shared

    assert "PlaintextTokenWarning" in client.__all__
    assert client.PlaintextTokenWarning is client_shared.PlaintextTokenWarning
