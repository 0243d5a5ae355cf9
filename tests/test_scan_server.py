"""``hashmatch scan --server``: matching through a real server over a real socket gives
the same report as matching against the same data dir locally."""

from __future__ import annotations

from click.testing import CliRunner
from scan_tree import build_tree, ingest_originals

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan
from hashmatch.server.cli import cli
from hashmatch.server.testing import running_server


def _body(path):
    return [x for x in path.read_text().splitlines() if '"kind": "summary"' not in x]


def test_scan_through_a_server_equals_a_local_scan(tmp_path):
    tree = build_tree(tmp_path)
    served = tmp_path / "served"
    ingest_originals(served, tree, ["astronaut", "coffee", "chelsea"], list_name="partner")

    local = tmp_path / "local.jsonl"
    matcher = LocalMatcher.open(served)
    with Catalog(tmp_path / "local.sqlite") as catalog:
        scan([tree.root], catalog=catalog, matcher=matcher, report=local,
             options=ScanOptions(workers=0, progress=False))  # fmt: skip
    matcher.close()

    with running_server(served, tenants={"scanner": (["match"], True)}) as ts:
        token = ts.tokens["scanner"]
        remote = tmp_path / "remote.jsonl"
        result = CliRunner().invoke(
            cli,
            ["scan", str(tree.root), "--server", ts.target, "--token", token,
             "--catalog", str(tmp_path / "remote.sqlite"), "--workers", "0",
             "--out", str(remote), "--no-progress"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        for args, says in (
            (["--list", "nolist", "--token", token], "--list: no hash list named 'nolist'"),
            (["--list", "partner", "--token", "wrong"], "UNAUTHENTICATED"),
        ):
            refused = CliRunner().invoke(
                cli,
                [
                    "scan",
                    str(tree.root),
                    "--server",
                    ts.target,
                    "--catalog",
                    str(tmp_path / "x.sqlite"),
                    *args,
                ],
            )
            assert refused.exit_code == 1 and says in refused.output, refused.output
            assert "Traceback" not in refused.output
    assert _body(remote) == _body(local)
    assert sum('"kind": "match"' in x for x in _body(remote)) == 7


def test_a_lost_server_stops_the_scan_but_keeps_the_hashes(tmp_path):
    import socket

    import pytest

    from hashmatch.engine.scan import LookupFailed, RemoteMatcher
    from hashmatch.server.client import HashmatchClient

    tree = build_tree(tmp_path)
    ingest_originals(tmp_path / "data", tree, ["coffee"], list_name="partner")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = RemoteMatcher(HashmatchClient(f"127.0.0.1:{port}", retries=0, timeout=2))
    catalog = Catalog(tmp_path / "c.sqlite")
    opts = ScanOptions(workers=0, progress=False, follow_symlinks=False)
    with pytest.raises(LookupFailed, match="run the same scan again"):
        scan([tree.root / "exact"], catalog=catalog, matcher=dead, options=opts)
    dead.close()
    assert catalog.stats()["hashed"] == 2
    calls = catalog.counter("hash_calls")

    matcher = LocalMatcher.open(tmp_path / "data")  # resume against a working matcher
    summary = scan([tree.root / "exact"], catalog=catalog, matcher=matcher,
                   report=tmp_path / "r.jsonl", options=opts)  # fmt: skip
    matcher.close()
    assert summary.hashed == 0 and summary.skipped_unchanged == 2
    assert catalog.counter("hash_calls") == calls
    assert summary.matches == 2  # coffee-copy.png: pdq + md5
    catalog.close()


def test_a_scan_without_a_token_fails_before_hashing_anything(tmp_path):
    """The README's example without --token used to hash the first batch, then fail
    with "run the same scan again to resume", which failed the same way."""
    tree = build_tree(tmp_path)
    with running_server(tmp_path / "served", tenants={"scanner": (["match"], True)}) as ts:
        result = CliRunner(env={"HASHMATCH_TOKEN": None}).invoke(
            cli, ["scan", str(tree.root), "--server", ts.target, "--workers", "0",
                  "--catalog", str(tmp_path / "c.sqlite"), "--no-progress"],
        )  # fmt: skip
    assert result.exit_code == 1
    assert "UNAUTHENTICATED" in result.output
    assert "give a token with --token, --token-file or HASHMATCH_TOKEN" in result.output
    assert "resume" not in result.output
    if (tmp_path / "c.sqlite").exists():
        with Catalog(tmp_path / "c.sqlite") as catalog:
            assert catalog.counter("hash_calls") == 0


def test_scan_and_rescan_reach_a_server_behind_a_private_ca(tmp_path):
    """--ca (and --token-file), as `remote` has them; a certificate the scan cannot
    verify fails at once, saying to give the CA, not after 60 s as a server that is down."""
    from hashmatch.server.testing import self_signed_cert

    tree = build_tree(tmp_path)
    served = tmp_path / "served"
    ingest_originals(served, tree, ["astronaut"], list_name="partner")
    key, cert = self_signed_cert(tmp_path, "server")
    tenants = {"scanner": (["match", "export"], True)}
    with running_server(served, tenants=tenants, tls_cert=cert, tls_key=key) as ts:
        token_file = tmp_path / "token"
        token_file.write_text(ts.tokens["scanner"] + "\n")
        base = ["--server", f"localhost:{ts.server.port}", "--token-file", str(token_file),
                "--catalog", str(tmp_path / "c.sqlite")]  # fmt: skip
        untrusted = CliRunner().invoke(
            cli, ["scan", str(tree.root), *base, "--tls", "--workers", "0", "--no-progress"]
        )
        assert untrusted.exit_code == 1
        assert "give its CA with --ca" in untrusted.output, untrusted.output
        scanned = CliRunner().invoke(
            cli, ["scan", str(tree.root), *base, "--ca", cert, "--workers", "0",
                  "--no-progress", "--out", str(tmp_path / "r.jsonl")],
        )  # fmt: skip
        assert scanned.exit_code == 0, scanned.output
        assert '"kind": "match"' in (tmp_path / "r.jsonl").read_text()
        rescanned = CliRunner().invoke(
            cli, ["rescan", *base, "--ca", cert, "--out", str(tmp_path / "rr.jsonl")]
        )
        assert rescanned.exit_code == 0, rescanned.output


def test_a_scan_stopped_in_its_last_lookup_is_interrupted(tmp_path):
    """A stop while a lost server's lookups of the last batch are retried: the lookup is
    left (its files stay to be matched by the re-run), and the scan ended as complete,
    its report without that batch's matches, exit 0, the run not interrupted."""
    import socket
    import threading
    import time

    import pytest

    from hashmatch.engine.scan import RACY_MTIME_NS, RemoteMatcher, ScanInterrupted
    from hashmatch.server.client import HashmatchClient

    tree = build_tree(tmp_path)
    ingest_originals(tmp_path / "data", tree, ["coffee"], list_name="partner")
    time.sleep(RACY_MTIME_NS / 1e9 + 0.1)  # stats a re-run trusts: the files are skipped
    catalog = Catalog(tmp_path / "c.sqlite")
    opts = ScanOptions(workers=0, progress=False, follow_symlinks=False)
    matcher = LocalMatcher.open(tmp_path / "data")
    first = scan([tree.root / "exact"], catalog=catalog, matcher=matcher, options=opts)
    matcher.close()
    assert first.hashed == 2

    with socket.socket() as sock:  # a port nobody listens on: lookups retried
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lost = RemoteMatcher(HashmatchClient(f"127.0.0.1:{port}", timeout=30))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    stopped = ScanOptions(workers=0, progress=False, follow_symlinks=False, stop=stop)
    with pytest.raises(ScanInterrupted) as raised:
        scan([tree.root / "exact"], catalog=catalog, matcher=lost, options=stopped)
    lost.close()
    summary = raised.value.summary
    assert summary.interrupted
    # 'N file(s) done': not the two left to the re-run (they were counted as skipped)
    assert (summary.seen, summary.hashed + summary.skipped_unchanged + summary.failed) == (2, 0)

    matcher = LocalMatcher.open(tmp_path / "data")  # the re-run matches them
    again = scan([tree.root / "exact"], catalog=catalog, matcher=matcher, options=opts)
    matcher.close()
    assert (again.hashed, again.skipped_unchanged, again.matches) == (0, 2, 2)
    catalog.close()
