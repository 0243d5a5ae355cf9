"""A server whose disk fills up, over a real socket: writes say so (RESOURCE_EXHAUSTED,
naming the data dir and what was kept), the server keeps answering, and writes work
again once space is freed. And a server started under a low open-files limit raises
it to the hard limit, or warns when the hard limit is low.

The full disk is a real one: a small tmpfs (mounting needs root; skipped without),
filled with a preallocated file. A file-size rlimit would give EFBIG/SIGXFSZ, not the
ENOSPC / SQLITE_FULL a full disk gives, so it would test another path.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_server_metrics import _scrape

from hashmatch.server.cli import cli
from hashmatch.server.client import signal
from hashmatch.server.testing import running_server


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs (a disk that can fill) needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(mnt: Path, leave: int = 0) -> Path:
    """Take all but ``leave`` bytes of the filesystem with one preallocated file."""
    stat = os.statvfs(mnt)
    fill = mnt / "fill"
    fd = os.open(fill, os.O_CREAT | os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, max(stat.f_bavail * stat.f_frsize - leave, 1))
    finally:
        os.close(fd)
    return fill


def _hexes(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.getrandbits(256):064x}" for _ in range(n)]


def _signals(hexes: list[str]) -> list:
    return [signal("pdq", h) for h in hexes]


def test_full_disk_is_resource_exhausted_and_writes_work_again_once_freed(small_disk):
    rng = random.Random(7)
    data_dir = small_disk / "d"
    with running_server(data_dir) as ts:
        client = ts.client(timeout=20, retries=0)
        kept = _hexes(rng, 100)
        assert client.ingest("g", _signals(kept)).added == 100
        fill = _fill(small_disk)

        with pytest.raises(grpc.RpcError) as err:
            client.ingest("g", _signals(_hexes(rng, 5000)), batch_size=1000)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details()
        assert "the server's disk is full" in details
        assert f"data dir {data_dir}" in details
        assert "no signal of this call was stored" in details

        with pytest.raises(grpc.RpcError) as err:
            client.snapshot()
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "disk is full" in err.value.details()

        # still serving, and what was acknowledged before is there
        found = client.match([("pdq", h) for h in kept[:5]], threshold=0)
        assert all(r.matches for r in found.results)
        assert client.stats().total_signals == 100

        fill.unlink()
        assert client.ingest("g", _signals(_hexes(rng, 5000)), batch_size=1000).added == 5000
        assert client.snapshot().path


def test_rebuild_without_room_for_its_snapshot_reports_its_summary(small_disk):
    rng = random.Random(8)
    with running_server(small_disk / "d", metrics_port=0) as ts:
        client = ts.client(timeout=60, retries=0)
        sent = _hexes(rng, 40_000)
        assert client.ingest("g", _signals(sent), batch_size=10_000).added == 40_000
        # room for the rebuild's audit row, not for a snapshot of 40k hashes (>1 MiB)
        _fill(small_disk, leave=256 * 1024)

        last = list(client.rebuild())[-1]
        assert last.finished and last.stage == "done"
        summary = json.loads(last.summary_json)
        assert summary["snapshot"] is None
        assert "snapshot failed" in summary["snapshot_error"]
        assert "disk is full" in summary["snapshot_error"]
        assert last.snapshot_error == summary["snapshot_error"]  # the proto field too
        assert client.match([("pdq", sent[0])], threshold=0).results[0].matches
        scraped = _scrape(ts)  # an alert can tell "serving, but no snapshot"
        assert scraped['hashmatch_index_rebuilds_total{outcome="snapshot_failed"}'] == 1.0
        assert scraped['hashmatch_index_rebuilds_total{outcome="ok"}'] == 0.0

        # the CLI: exit 0 (the rebuild is live), a warning on stderr
        result = CliRunner().invoke(cli, ["remote", "--server", ts.target, "rebuild"])
        assert result.exit_code == 0, result.output
        assert "warning: the rebuilt index is live, but its snapshot failed" in result.stderr


def test_ingest_filling_the_disk_mid_stream_says_which_messages_were_kept(small_disk):
    rng = random.Random(9)
    with running_server(small_disk / "d") as ts:
        client = ts.client(timeout=20, retries=0)
        assert client.ingest("g", _signals(_hexes(rng, 100))).added == 100
        _fill(small_disk, leave=1024 * 1024)  # room for a few messages, not for 40

        with pytest.raises(grpc.RpcError) as err:
            client.ingest("g", _signals(_hexes(rng, 40_000)), batch_size=1000)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        found = re.search(r"messages before stream\[(\d+)\] were stored", err.value.details())
        assert found, err.value.details()
        # exactly those messages are in the store: the message said the truth
        assert client.stats().total_signals == 100 + int(found.group(1)) * 1000


SERVE = "from hashmatch.server.cli import main; main()"  # cli.py has no __main__


def _serve_under(nofile: str, data_dir: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """``hashmatch serve`` under ``prlimit --nofile=SOFT:HARD``: (process, port, the
    log lines up to "listening")."""
    proc = subprocess.Popen(
        [
            "prlimit", f"--nofile={nofile}", "--", sys.executable, "-c", SERVE, "serve",
            "--data-dir", str(data_dir), "--insecure-no-auth", "--listen", "127.0.0.1:0",
            "--metrics-port", "-1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"serve exited early: {lines}"
        lines.append(line)
        found = re.search(r"hashmatch listening on .* \(port (\d+)\)", line)
        if found:
            return proc, int(found.group(1)), lines
    raise AssertionError(f"serve did not start listening: {lines}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def prlimit() -> None:
    if shutil.which("prlimit") is None or not Path("/proc/self/limits").exists():
        pytest.skip("needs prlimit (util-linux) and /proc")


def _open_files_limit(pid: int) -> tuple[str, str]:
    text = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"^Max open files\s+(\S+)\s+(\S+)", text, re.MULTILINE)
    assert found, text
    return found.group(1), found.group(2)


def test_server_raises_a_low_open_files_limit_and_serves_past_it(tmp_path, prlimit):
    proc, port, _lines = _serve_under("64:4096", tmp_path / "d")
    try:
        assert _open_files_limit(proc.pid) == ("4096", "4096")
        # 100 connections at once, each its own socket on the server: past 64 they
        # used to hang, the listener retrying every second
        channels = [
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(100)
        ]
        try:
            for channel in channels:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        finally:
            for channel in channels:
                channel.close()
    finally:
        _stop(proc)


def test_server_warns_when_the_hard_open_files_limit_is_low(tmp_path, prlimit):
    proc, _port, lines = _serve_under("64:64", tmp_path / "d")
    _stop(proc)
    warning = [line for line in lines if "open-files limit is 64" in line]
    assert warning and "hard limit 64" in warning[0], lines


def test_a_snapshot_failing_for_another_reason_says_why_to_the_admin(tmp_path):
    """Not a full disk (here: a file where the snapshot dir should be): INTERNAL, as a
    server fault, but with the engine's message, not "logged on the server"."""
    rng = random.Random(9)
    with running_server(tmp_path / "d") as ts:
        client = ts.client(timeout=30, retries=0)
        sent = _hexes(rng, 10)
        assert client.ingest("g", _signals(sent)).added == 10
        snapshots = ts.engine.snapshot_dir
        shutil.rmtree(snapshots, ignore_errors=True)
        snapshots.write_text("not a directory")

        with pytest.raises(grpc.RpcError) as err:
            client.snapshot()
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert f"cannot write a snapshot in {snapshots}" in err.value.details()
        assert "the previous snapshot is kept" in err.value.details()
        assert client.match([("pdq", sent[0])], threshold=0).results[0].matches

        snapshots.unlink()
        assert client.snapshot().path


def test_a_first_start_on_a_full_disk_leaves_no_empty_tokens_file(small_disk):
    """Before: a 0-byte auth.toml, refused at every later start ("holds no tokens")."""
    from hashmatch.server.auth import bootstrap_admin

    data = small_disk / "d"
    data.mkdir()
    fill = _fill(small_disk)
    with pytest.raises(OSError) as full:
        bootstrap_admin(data / "auth.toml")
    assert full.value.errno == errno.ENOSPC, full.value
    assert sorted(p.name for p in data.iterdir()) == []  # neither file, no temp
    fill.unlink()
    token = bootstrap_admin(data / "auth.toml")
    assert token and (data / "admin.token").read_text().strip() == token
    assert "admin" in (data / "auth.toml").read_text()


def test_a_rebuild_on_a_disk_too_full_to_audit_it_still_reports_it_live(small_disk):
    """The audit row after the swap used to fail the call (RESOURCE_EXHAUSTED, exit 1)
    although the rebuilt index was live."""
    rng = random.Random(10)
    with running_server(small_disk / "d") as ts:
        client = ts.client(timeout=60, retries=0)
        sent = _hexes(rng, 20_000)
        assert client.ingest("g", _signals(sent), batch_size=10_000).added == 20_000
        _fill(small_disk)  # no room even for an audit row

        result = CliRunner().invoke(cli, ["remote", "--server", ts.target, "rebuild"])
        assert result.exit_code == 0, result.output
        summary = json.loads(json.loads(result.stdout.splitlines()[-1])["summary_json"])
        assert summary["total"] == 20_000
        assert "was not audited" in summary["audit_error"]
        assert "snapshot failed" in summary["snapshot_error"]
        assert "warning: the rebuilt index is live" in result.stderr
        assert client.match([("pdq", sent[0])], threshold=0).results[0].matches
