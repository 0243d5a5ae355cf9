"""The server address as people write it: a URL, surrounding whitespace, no port.

Before, gRPC took ``http://host:50051`` (or ``grpc://``, a trailing ``/``, a leading
space) as a host name that does not resolve, and the clients retried "errors resolving
...: Misformatted domain name" as a server that is down until the call's deadline (30 s
by default); without a port gRPC connected to 443, which only its error's address told.
"""

from __future__ import annotations

import socket
import time

import grpc
import pytest
from click.testing import CliRunner

from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.server.testing import running_server


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("http://127.0.0.1:50051", "give HOST:PORT, 127.0.0.1:50051"),
        ("grpc://hashmatch.internal:50051/", "give HOST:PORT, hashmatch.internal:50051"),
        ("http://127.0.0.1:50051/v1/match", "give HOST:PORT, 127.0.0.1:50051"),
        ("https://h.example:443", "give HOST:PORT, h.example:443 (with TLS: tls=True"),
    ],
)
def test_a_url_is_refused_when_the_client_is_made(given, said):
    with pytest.raises(ValueError, match=r"is a URL, not a gRPC address") as caught:
        HashmatchClient(given, timeout=30)
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("server", "said"),
    [
        (
            "http://127.0.0.1:50051",
            "Error: http://127.0.0.1:50051 is a URL, not a gRPC address: give HOST:PORT,"
            " 127.0.0.1:50051\n",
        ),
        (
            "127.0.0.1:50051/",
            "Error: 127.0.0.1:50051/ is not a gRPC address: the port of 127.0.0.1:50051/ is"
            " not a number: give HOST:PORT, 127.0.0.1:50051\n",
        ),
    ],
)
def test_remote_says_so_at_once(server, said):
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["remote", "--server", server, "lists"])
    assert result.exit_code == 1
    assert result.output == said
    assert time.monotonic() - started < 5  # not retried for --timeout (30 s)


def test_surrounding_whitespace_is_dropped(tmp_path):
    with running_server(tmp_path / "data", tenants={"ops": (["match"], True)}) as ts:
        client = HashmatchClient(f" {ts.target}\n", token=ts.tokens["ops"], timeout=10)
        assert client.health() == "SERVING"
        client.list_hash_lists()
        client.close()


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_no_port_says_grpc_used_443():
    if _listening(443):
        pytest.skip("something listens on 127.0.0.1:443 here")
    client = HashmatchClient("127.0.0.1", timeout=1)
    with pytest.raises(grpc.RpcError) as caught:
        client.list_hash_lists()
    client.close()
    hint = caught.value.connection_hint
    assert "no port in 127.0.0.1: gRPC connects to 443" in hint, hint
    assert "listens on 50051 unless told otherwise: 127.0.0.1:50051" in hint


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("127.0.0.1:50051/", "give HOST:PORT, 127.0.0.1:50051"),  # a URL's slash kept
        ("[::1]:50051/", "give HOST:PORT, [::1]:50051"),
        ("dns:///hashmatch.internal:50051/", "give HOST:PORT, hashmatch.internal:50051"),
        ("127.0.0.1:5005 1", "give HOST:PORT"),
    ],
)
def test_a_port_that_is_not_a_number_is_refused_by_both_clients(given, said):
    """gRPC failed such a target 'Failed to parse port in name' at the first call, and
    the clients retried it as a server that is down until the deadline (30 s)."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient

    with pytest.raises(ValueError, match=r"is not a gRPC address: the port of") as caught:
        HashmatchClient(given, timeout=30)
    assert str(caught.value).endswith(said), caught.value

    async def make() -> None:
        AsyncHashmatchClient(given, timeout=30)

    with pytest.raises(ValueError, match=r"is not a gRPC address") as caught:
        asyncio.run(make())
    assert str(caught.value).endswith(said), caught.value


def test_a_target_of_another_scheme_is_left_to_grpc():
    """xds:///name and the like are resolved by gRPC's plugins, not as host:port: not
    refused here (a hint of its own is gRPC's to give)."""
    HashmatchClient("xds:///hashmatch.internal", timeout=1).close()
