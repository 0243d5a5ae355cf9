"""The typed client and the ``hashmatch serve`` / ``hashmatch remote`` verbs, end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal as signals
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from readme_example import run_python_example
from served_process import serve_no_auth, served_address
from skimage import data
from test_cli_video import write_video

from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient, signal
from hashmatch.server.testing import running_server

OPS = {"ops": (["match", "write", "admin"], True), "reader": (["match"], False)}
SERVE = "from hashmatch.server.cli import main; main()"  # cli.py has no __main__
HEX = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_retries_unavailable_until_the_server_is_up(tmp_path):
    port = _free_port()
    box = {}
    refused = threading.Event()  # not a sleep: a loaded box may start the server first

    def start_late() -> None:
        refused.wait(30)
        box["cm"] = running_server(tmp_path, tenants=OPS, listen=f"127.0.0.1:{port}", wait=False)
        box["ts"] = box["cm"].__enter__()

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        with HashmatchClient(f"127.0.0.1:{port}", retries=0, timeout=2) as impatient:
            with pytest.raises(grpc.RpcError) as err:
                impatient.list_hash_lists()
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        refused.set()
        starter.join()
        token = box["ts"].tokens["ops"]
        with HashmatchClient(
            f"127.0.0.1:{port}", token=token, retries=40, backoff=0.05, timeout=30
        ) as patient:
            assert list(patient.list_hash_lists().lists) == []  # retried through loading
    finally:
        refused.set()
        starter.join()
        if "cm" in box:
            box["cm"].__exit__(None, None, None)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("cli"), tenants=OPS) as ts:
        yield ts


def _remote(served, *args: str, tenant: str = "ops", input: str | None = None, options: tuple = ()):
    """``hashmatch remote [OPTIONS] ARGS`` (``options``: more of ``remote``'s own)."""
    runner = CliRunner()
    given = ["--server", served.target, "--token", served.tokens[tenant], *options]
    return runner.invoke(cli, ["remote", *given, *args], input=input, catch_exceptions=False)


def test_remote_verbs(served, tmp_path):
    hashes = tmp_path / "hashes.csv"
    hashes.write_text(
        "signal_type,signal_value,labels,external_id\n"
        f"pdq,{HEX},,\npdq,{'0' * 64},label-a;label-b,ext-1\npdq,zz,,\n"
    )
    result = _remote(served, "ingest", "cli-list", str(hashes), "--source", "test")
    assert result.exit_code == 0, result.output
    ingest = json.loads(result.stdout)
    assert ingest["added"] == 2 and ingest["rejected"] == 1 and ingest["updated"] == 0
    assert [r["line"] for r in ingest["rejections"]] == [4]  # the file's line, not index 2
    broken = tmp_path / "broken.csv"  # one line the local parser refuses, one the server does
    broken.write_text(f"signal_type,signal_value\npdq\npdq,{'1' * 63}\n")
    result = _remote(served, "ingest", "cli-list", str(broken))
    assert result.exit_code == 1  # nothing stored
    mixed = json.loads(result.stdout)
    assert mixed["rejected"] == 2 and len(mixed["unparsed"]) == 1, mixed
    clip = tmp_path / "clip.vpdq"  # vPDQ's text format: frame,quality,hash,timestamp
    clip.write_text("".join(f"{i},90,{format(i + 1, '064x')},{i}.0\n" for i in range(3)))
    video = json.loads(_remote(served, "ingest", "cli-videos", str(clip)).stdout)
    assert video["added"] == 1, video
    plain = tmp_path / "plain.txt"
    plain.write_text(f"{HEX}\n")
    result = _remote(served, "ingest", "cli-plain", str(plain), "--format", "hex", "--type", "pdq")
    assert json.loads(result.stdout)["added"] == 1

    result = _remote(served, "match", f"pdq:{HEX}", "0" * 64)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["matches"][0]["hash_hex"] == HEX
    assert isinstance(lines[0]["matches"][0]["signal_id"], int)  # not proto3 JSON's string
    assert lines[1]["matches"][0]["labels"] == ["label-a", "label-b"]

    image = tmp_path / "photo.jpg"
    Image.fromarray(data.astronaut()).save(image, "JPEG")
    result = _remote(served, "hash", str(image), "--type", "pdq", "--type", "md5")
    assert result.exit_code == 0, result.output
    hashed = json.loads(result.stdout)
    assert hashed["file"] == str(image) and len(hashed["hashes"]) == 2

    result = _remote(served, "match", "--media", str(image))
    assert result.exit_code == 0, result.output
    flat = tmp_path / "flat.png"  # PDQ quality 0: under the floor
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(flat, "PNG")
    for rule, stored_only in (("skip", False), ("match_quality_stored", True)):
        args = ("--upscale-small", "--upscale-small-replicate", "--upscale-small-phases")
        args += ("--low-quality-queries", rule)
        result = _remote(served, "match", "--media", str(flat), *args)
        assert result.exit_code == 0, result.output
        floored = json.loads(result.stdout)
        assert floored["skipped_low_quality"]
        assert floored.get("quality_stored_only", False) is stored_only
        # 64 px: as given, enlarged, repeated, then the repeated one moved 3 ways
        assert len(floored["computed"][0]["hex"]) == 6

    result = _remote(served, "lists")
    assert "cli-list" in result.output
    result = _remote(served, "retract", "cli-list", HEX, "--reason", "test")
    assert json.loads(result.stdout)["retracted"] == 1
    again = json.loads(_remote(served, "retract", "cli-list", HEX).stdout)  # why 0: named
    assert (again["retracted"], again["already_retracted"]) == (0, [f"pdq:{HEX}"]), again
    result = _remote(served, "stats")
    total = json.loads(result.stdout)["total_signals"]
    assert isinstance(total, int) and total > 0
    result = _remote(served, "rebuild")
    assert json.loads(result.output.splitlines()[-1])["finished"] is True
    result = _remote(served, "snapshot")
    assert json.loads(result.stdout)["path"]


def test_remote_errors_are_one_line_with_the_field(served):
    result = CliRunner().invoke(
        cli, ["remote", "--server", served.target, "--token", served.tokens["ops"], "match", "abc"]
    )
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output and "hashes[0].hex" in result.output
    assert result.output.count("hashes[0].hex") == 1, result.output  # said once
    result = CliRunner().invoke(cli, ["remote", "--server", served.target, "stats"])
    assert result.exit_code == 1 and "UNAUTHENTICATED" in result.output
    assert "--token, --token-file or HASHMATCH_TOKEN" in result.output
    result = _remote(served, "stats", tenant="reader")
    assert result.exit_code == 1 and "PERMISSION_DENIED" in result.output


def test_remote_bare_hex_of_another_type_says_it_was_read_as_pdq(served):
    """`remote match <an MD5>` answered only the server's "pdq hash must be 64 hex
    characters, got 32"; it now says, before sending, what `hashmatch match` says."""
    md5 = "8088c0a735d0478be8730969a49dc9c7"
    served.client("ops").ingest("remote-digests", [signal("md5", md5)])
    hint = "; bare hex is read as pdq: write md5:HEX or give --type md5"
    refused = _remote(served, "match", HEX, md5)
    assert refused.exit_code == 1
    assert f"hashes[1]: pdq hash must be 64 hex characters, got 32{hint}" in refused.output
    assert "INVALID_ARGUMENT" not in refused.output  # said before any request
    for found in ((f"md5:{md5}",), (md5, "--type", "md5")):
        result = _remote(served, "match", *found)
        assert json.loads(result.stdout)["matches"][0]["hash_hex"] == md5, result.output
    kept = _remote(served, "retract", "remote-digests", md5)
    assert kept.exit_code == 1 and hint in kept.output
    short = _remote(served, "match", "c2924c5532bddfc8")
    assert "write TYPE:HEX (ahash, dhash, phash or whash) or give --type" in short.output
    typed = _remote(served, "match", "--type", "pdq", md5)  # --type given: the server's
    assert "INVALID_ARGUMENT" in typed.output and "bare hex" not in typed.output
    with pytest.raises(grpc.RpcError) as sent:  # the server's contract is unchanged
        served.client("ops").match([("pdq", md5)])
    assert sent.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "bare hex" not in sent.value.details()
    result = _remote(served, "retract", "remote-digests", f"md5:{md5}")
    assert json.loads(result.stdout)["retracted"] == 1


def test_remote_match_of_more_than_max_batch_names_the_bad_hash_of_the_call(served):
    """10,001 hashes go as two requests; the last one is bad: the error named
    hashes[0] (its index in the second request), a good hash of the call."""
    result = _remote(served, "match", *[HEX] * 10_000, "abc")
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT: hashes[10000].hex" in result.output, result.output
    assert "hashes[0]" not in result.output, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["match", "--max-results", "-1", HEX],
        ["match", "--threshold", str(2**31), HEX],
        ["match", "--min-quality", str(-(2**31) - 1), HEX],
        ["retract", "L", HEX, "--id", str(2**63)],
    ],
)
def test_remote_options_out_of_the_protos_range_are_usage_errors(served, args):
    """Before: protobuf's bare ValueError ("Value out of range") as a traceback."""
    option = next(a for a in args if a.startswith("--"))
    result = _remote(served, *args)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert "is not in the range" in result.output


@pytest.mark.parametrize("verb", ["match", "retract"])
def test_remote_help_does_not_print_the_protos_integer_bounds(verb):
    """`remote match --help` read '--min-quality INTEGER RANGE ...
    [-2147483648<=x<=2147483647]': the wire's bounds, not the option's meaning."""
    out = CliRunner().invoke(cli, ["remote", verb, "--help"]).output
    assert "2147483647" not in out and "4294967295" not in out and "RANGE" not in out


def test_remote_retract_failing_part_way_says_what_was_retracted(served):
    """1000 targets a request: the second holds a malformed hash; the first retracted."""
    rng = np.random.default_rng(14)
    hexes = [row.tobytes().hex() for row in rng.integers(0, 256, (1000, 32), dtype=np.uint8)]
    client = served.client("ops")
    client.ingest("part-way", [signal("pdq", h) for h in hexes])
    result = _remote(served, "retract", "part-way", *hexes, "zz")
    assert result.exit_code == 1 and "INVALID_ARGUMENT" in result.output
    assert "the requests before it retracted 1000 signals" in result.output, result.output


def test_hashmatch_serve_bootstraps_a_token_and_drains_on_sigterm(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-c", SERVE, "serve",
            "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}",
            "--metrics-port", "-1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        said = ""
        deadline = time.monotonic() + 60
        while "HASHMATCH_TOKEN=" not in said and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "serve exited early"
            said += line
        # stderr is a pipe here, as under journald or docker: the token is only in the
        # 0600 file the message names, never in the log
        saved = tmp_path / "data" / "admin.token"
        assert f"HASHMATCH_TOKEN=$(cat {saved})" in said, said
        token = saved.read_text().strip()
        assert len(token) >= 32 and token not in said
        assert oct(saved.stat().st_mode & 0o777) == "0o600"
        assert token not in (tmp_path / "data" / "auth.toml").read_text()
        with HashmatchClient(f"127.0.0.1:{port}", token=token, retries=40, backoff=0.05) as c:
            c.wait_until_serving(60)
            assert c.stats().total_signals == 0
        # A new tenant token, loaded on SIGHUP without a restart.
        made = CliRunner().invoke(
            cli,
            ["token", "acme", "--role", "match", "--auth-file", str(tmp_path / "data/auth.toml")],
        )
        assert made.exit_code == 0, made.output
        acme_token = made.stdout.strip()  # stderr: where the audit row went
        proc.send_signal(signals.SIGHUP)
        with HashmatchClient(f"127.0.0.1:{port}", token=acme_token, retries=0) as acme:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert not acme.list_hash_lists().lists  # nothing shared with acme yet
                    break
                except grpc.RpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAUTHENTICATED
                    assert time.monotonic() < deadline, "SIGHUP did not reload the tokens"
                    time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as err:
                acme.stats()
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with HashmatchClient(f"127.0.0.1:{port}", retries=0) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.stats()
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signals.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_insecure_no_auth_says_so(tmp_path):
    port = _free_port()
    with serve_no_auth(tmp_path, f"127.0.0.1:{port}") as seen:
        # one warning, naming the flag (before, serve's own "WARNING: ..." and the
        # server's start-up's said it twice)
        assert seen.count("every caller is an admin of every list") == 1, seen
        assert "NO AUTHENTICATION (--insecure-no-auth)" in seen, seen
        with HashmatchClient(f"127.0.0.1:{port}", retries=0) as client:
            jpeg = io.BytesIO()
            Image.fromarray(data.camera()).save(jpeg, "JPEG")
            assert client.hash([jpeg.getvalue()]).items


def test_a_token_with_a_trailing_newline_still_authenticates(served):
    with HashmatchClient(served.target, token=served.tokens["ops"], retries=0) as clean:
        want = clean.list_hash_lists()
    with HashmatchClient(served.target, token=served.tokens["ops"] + "\n", retries=0) as c:
        assert c.list_hash_lists() == want  # authenticated as ops (a refusal raises)
    with pytest.raises(ValueError, match="token"):
        HashmatchClient(served.target, token="caf\u00e9")


def test_token_file_beats_the_environment_but_not_both_options(served, tmp_path):
    token_file = tmp_path / "ops.token"
    token_file.write_text(served.tokens["ops"] + "\n")
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["remote", "--server", served.target, "--token-file", str(token_file), "stats"],
        env={"HASHMATCH_TOKEN": served.tokens["reader"]},  # a reader may not call stats
    )
    assert result.exit_code == 0, result.output
    assert "total_signals" in result.output
    result = runner.invoke(
        cli,
        ["remote", "--server", served.target, "--token", served.tokens["ops"],
         "--token-file", str(token_file), "stats"],
    )  # fmt: skip
    assert result.exit_code == 2 and "not both" in result.output
    token_file.write_text("\n")
    result = runner.invoke(
        cli, ["remote", "--server", served.target, "--token-file", str(token_file), "stats"]
    )
    assert result.exit_code == 1 and "empty" in result.output


@pytest.mark.parametrize("given", ["--cert", "--key"])
def test_remote_with_a_client_cert_or_key_alone_is_a_usage_error(tmp_path, given):
    pem = tmp_path / "client.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    # A child process: grpcio used to abort the whole process (SIGABRT) here.
    done = subprocess.run(
        [sys.executable, "-c", SERVE, "remote", "--server", "127.0.0.1:1", "--tls", given,
         str(pem), "stats"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--cert and --key go together" in done.stderr
    done = subprocess.run(
        [sys.executable, "-c",
         "from hashmatch.server.client import HashmatchClient\n"
         "try:\n"
         f"    HashmatchClient('127.0.0.1:1', client_cert={str(pem)!r})\n"
         "except ValueError as exc:\n"
         "    print(exc)\n"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "go together" in done.stdout, done.stderr


def _random_pdq_csv(path, rows: int) -> None:
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, size=(rows, 32), dtype=np.uint8)
    path.write_text(
        "signal_type,signal_value\n" + "".join(f"pdq,{c.tobytes().hex()}\n" for c in codes)
    )


def test_remote_ingest_of_a_big_file_outlasts_the_per_call_timeout(served, tmp_path):
    big = tmp_path / "big.csv"
    _random_pdq_csv(big, 20_000)  # 400 messages of 50: about a second, well over 0.2 s
    args = ("ingest", "big-list", str(big), "--batch-size", "50")
    result = _remote(served, *args, options=("--timeout", "0.2"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 20_000


def test_an_ingest_cut_off_by_its_deadline_says_how_far_it_got(served, tmp_path):
    big = tmp_path / "big.csv"
    _random_pdq_csv(big, 20_000)
    args = ("ingest", "cut-list", str(big), "--batch-size", "50")
    result = _remote(served, *args, options=("--timeout", "0.0005"))
    assert result.exit_code == 1, result.output
    assert "DEADLINE_EXCEEDED" in result.output
    # the server's count when it saw the deadline pass first, else the client's
    said = result.output
    assert "were stored: added" in said or (
        "of 20000 signals were sent" in said and "re-running the same ingest is harmless" in said
    ), said


def test_remote_ingest_reads_vpdq_by_name_and_fails_when_all_is_rejected(served, tmp_path):
    clip = tmp_path / "clip.txt"  # vPDQ's text format, under a name that does not say so
    clip.write_text("".join(f"{i},90,{format(i + 7, '064x')},{i}.0\n" for i in range(3)))
    result = _remote(served, "ingest", "named-videos", str(clip), "--format", "vpdq")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 1
    bad = tmp_path / "bad.csv"  # every line parses here and is refused by the server
    bad.write_text(f"signal_type,signal_value\npdq,{'1' * 63}\npdq,{'2' * 65}\n")
    result = CliRunner().invoke(
        cli,
        ["remote", "--server", served.target, "--token", served.tokens["ops"], "ingest",
         "all-bad", str(bad)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["rejected"] == 2
    assert "nothing stored: all 2 rejected" in result.stderr
    dup = tmp_path / "dup.csv"  # a duplicate names the file line of its first copy
    dup.write_text(f"signal_type,signal_value\n\npdq,{HEX}\npdq,{HEX}\n")
    result = _remote(served, "ingest", "dups", str(dup))
    (rejection,) = json.loads(result.stdout)["rejections"]
    assert rejection["line"] == 4, rejection
    assert rejection["reason"] == "duplicate pdq hash within the input (first at line 3)"


def test_match_stream_access_log_counts_the_whole_stream(served, caplog):
    client = served.client("ops")
    requests = [
        client.match_request([("pdq", HEX)] * 3, request_id="a"),
        client.match_request([("pdq", HEX)] * 2, request_id="b"),
    ]
    with caplog.at_level("INFO", logger="hashmatch.access"):
        replies = list(client.match_stream(requests, timeout=30))
        assert [r.request_id for r in replies] == ["a", "b"]
        deadline = time.monotonic() + 5  # the line is written as the call ends, server-side
        while time.monotonic() < deadline:
            lines = [
                json.loads(r.getMessage())
                for r in caplog.records
                if r.name == "hashmatch.access" and '"MatchStream"' in r.getMessage()
            ]
            if lines:
                break
            time.sleep(0.02)
    assert lines and lines[-1]["messages"] == 2 and lines[-1]["queries"] == 5, lines


def test_remote_ingest_from_stdin_names_file_lines_past_the_first_message(served):
    """Streamed in messages of --batch-size: the server's rejections (by stream index)
    and the lines that do not parse here are told by file line, from stdin too."""
    rng = np.random.default_rng(12)
    rows = [f"pdq,{c.tobytes().hex()}" for c in rng.integers(0, 256, (2500, 32), np.uint8)]
    rows[1700] = "pdq," + "1" * 63  # the server refuses it: stream index 1700
    rows.insert(2000, "pdq")  # no value: refused while parsing, never sent
    text = "signal_type,signal_value\n" + "\n".join(rows) + "\n"
    result = _remote(served, "ingest", "stdin-list", "-", "--batch-size", "1000", input=text)
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert reply["added"] == 2499 and reply["rejected"] == 2 and reply["unparsed_total"] == 1
    assert [r["line"] for r in reply["rejections"]] == [1702]  # header + 1-based
    assert "line 2002" in reply["unparsed"][0]


def test_remote_ingest_streams_a_large_file_in_bounded_memory(served, tmp_path):
    """Buffered, 150k signals held ~270 MB of Signal messages (1M: 1.8 GB); streamed,
    the CLI's peak stays near its import footprint. Measured in a fresh parent so
    only the CLI's own peak counts."""
    path = tmp_path / "big.csv"
    rng = np.random.default_rng(13)
    codes = rng.integers(0, 256, (150_000, 32), np.uint8)
    path.write_text("signal_type,signal_value\n" + "".join(
        f"pdq,{c.tobytes().hex()}\n" for c in codes))  # fmt: skip
    argv = [sys.executable, "-m", "hashmatch.server.cli", "remote", "--server", served.target,
            "--token", served.tokens["ops"], "ingest", "big-list", str(path)]  # fmt: skip
    probe = (
        "import json, resource, subprocess, sys\n"
        "done = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([done.returncode, done.stdout, done.stderr, peak]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(argv)], capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    code, stdout, stderr, peak_kib = json.loads(out.stdout)
    assert code == 0, stderr
    assert json.loads(stdout)["added"] == 150_000
    assert peak_kib < 260 * 1024, f"peak RSS {peak_kib // 1024} MiB"


def test_a_refused_ingest_does_not_say_some_may_be_stored(served, tmp_path):
    """Only a stream cut off part way can have stored part of it; a bad token or a
    missing role stores nothing, and the hint said otherwise."""
    path = tmp_path / "h.txt"
    path.write_text(HEX + "\n")
    for options, code in ((("--token", "wrong"), "UNAUTHENTICATED"),
                          (("--token", served.tokens["reader"]), "PERMISSION_DENIED")):  # fmt: skip
        result = CliRunner().invoke(
            cli,
            ["remote", "--server", served.target, *options, "ingest", "x", str(path), "--type",
             "pdq"],
        )  # fmt: skip
        assert result.exit_code == 1 and code in result.output, result.output
        assert "may be stored" not in result.output


def test_a_tls_server_called_without_tls_says_it_may_be_tls(tmp_path):
    from hashmatch.server.testing import self_signed_cert

    key, cert = self_signed_cert(tmp_path, "server")
    with running_server(tmp_path / "d", tls_cert=cert, tls_key=key) as ts:
        result = CliRunner().invoke(
            cli, ["remote", "--server", ts.target, "--timeout", "1", "lists"]
        )
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output
    # asked of the server now (the library's connection_hint), no longer a guess
    assert "the server speaks TLS and this client connected without it" in result.output
    assert "`remote --tls --ca CA.pem`" in result.output


def test_a_tls_server_with_an_expired_certificate_is_named_with_its_date(tmp_path):
    """An expired server certificate read as "[::1]: Connection refused" (`localhost`'s
    last address) or as a CA problem ("give its CA with --ca", which was given); only
    gRPC's debug log said "certificate has expired"."""
    from hashmatch.server.testing import expired_cert

    key, cert = expired_cert(tmp_path, "server")
    with running_server(tmp_path / "d", tls_cert=cert, tls_key=key) as ts:
        port = ts.target.rpartition(":")[2]
        result = CliRunner().invoke(
            cli, ["remote", "--server", f"localhost:{port}", "--tls", "--ca", cert,
                  "--timeout", "1", "lists"],
        )  # fmt: skip
        client = HashmatchClient(ts.target, root_certificates=cert, retries=0)
        with client, pytest.raises(ConnectionError) as waited:
            client.wait_until_serving(10)  # gRPC's message names the cause here
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output, result.output
    assert "the server's certificate expired on 2020-01-02 00:00 UTC" in result.output
    assert "the server's certificate has expired" in str(waited.value)
    assert "give its CA" not in result.output + str(waited.value)


def test_a_certificate_for_another_host_fails_the_wait_at_once_and_says_so(tmp_path):
    """A certificate that does not name the host connected to (here: ``server_name``
    another) was waited on for the whole timeout, then read "did not become SERVING ...
    is `hashmatch serve` running there?"; a call said nothing of the name either."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient
    from hashmatch.server.client import tls_hint
    from hashmatch.server.testing import self_signed_cert

    key, cert = self_signed_cert(tmp_path, "server")
    access = {"root_certificates": cert, "server_name": "other.example", "retries": 0}
    hint = "the server's certificate does not name the host connected to"

    async def aio_wait() -> None:
        async with AsyncHashmatchClient(ts.target, **access) as aio:
            await aio.wait_until_serving(20)

    with running_server(tmp_path / "d", tls_cert=cert, tls_key=key) as ts:
        started = time.monotonic()
        with HashmatchClient(ts.target, **access) as client:
            with pytest.raises(ConnectionError) as waited:
                client.wait_until_serving(20)
            with pytest.raises(grpc.RpcError) as called:
                client.list_hash_lists(timeout=2)
        with pytest.raises(ConnectionError) as aio_waited:
            asyncio.run(aio_wait())
        took = time.monotonic() - started
    assert hint in str(waited.value) and hint in str(aio_waited.value)
    assert took < 10, took  # the waits did not run out their 20 s
    assert hint in tls_hint(called.value.details())


def test_a_certificate_this_client_does_not_trust_is_named_whatever_address_failed_last(
    tmp_path,
):
    """A self-signed certificate called with --tls and no --ca (the README's `--tls`
    lines) read, for `localhost`, as "[::1]: Connection refused" when gRPC happened to
    try IPv6 last: the hint is now read from the server itself, as the dates are."""
    from hashmatch.server.client_shared import certificate_hint
    from hashmatch.server.testing import self_signed_cert

    key, cert = self_signed_cert(tmp_path, "server")
    with running_server(tmp_path / "d", tls_cert=cert, tls_key=key) as ts:
        port = ts.target.rpartition(":")[2]
        untrusted = certificate_hint(f"localhost:{port}")
        with open(cert, "rb") as fh:
            trusted = certificate_hint(f"localhost:{port}", roots=fh.read())
        result = CliRunner().invoke(
            cli, ["remote", "--server", f"localhost:{port}", "--tls", "--timeout", "1", "lists"]
        )
    assert "the server's certificate does not verify here" in untrusted, untrusted
    assert "give the CA that signed it with --ca" in untrusted
    assert trusted == ""
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output, result.output
    assert "--ca" in result.output  # this hint or gRPC's own CERTIFICATE_VERIFY_FAILED one


def test_a_certificate_that_does_not_verify_is_not_retried_until_the_deadline(tmp_path):
    """UNAVAILABLE is retried until the call's deadline; a certificate the client cannot
    verify is UNAVAILABLE too, but no retry changes it: `remote lists` against a
    self-signed server without --ca took its whole --timeout (30 s) to say so."""
    from hashmatch.server.testing import self_signed_cert

    key, cert = self_signed_cert(tmp_path, "server")
    with running_server(tmp_path / "d", tls_cert=cert, tls_key=key) as ts:
        client = HashmatchClient(ts.target, tls=True, timeout=20)  # 127.0.0.1: one address
        started = time.monotonic()
        with client, pytest.raises(grpc.RpcError) as failed:
            client.list_hash_lists()
        took = time.monotonic() - started
    assert "CERTIFICATE_VERIFY_FAILED" in failed.value.details()
    assert took < 10, took


def test_a_certificate_for_another_host_is_not_retried_until_the_deadline(tmp_path):
    """The retries stopped at once for a certificate no CA verifies, but not for one
    that does not name the host (the health wait stopped for both): a call against it
    was retried for its whole timeout."""
    from hashmatch.server.client import tls_hint
    from hashmatch.server.testing import self_signed_cert

    key, cert = self_signed_cert(tmp_path, "server")
    with running_server(tmp_path / "d", tls_cert=cert, tls_key=key) as ts:
        client = HashmatchClient(
            ts.target, root_certificates=cert, server_name="other.example", timeout=20
        )
        started = time.monotonic()
        with client, pytest.raises(grpc.RpcError) as failed:
            client.list_hash_lists()
        took = time.monotonic() - started
    assert "does not name the host" in tls_hint(failed.value.details())
    assert took < 10, took


def test_signal_expiry_takes_iso_text_and_datetimes_as_files_do():
    from datetime import UTC, datetime

    from hashmatch.server.client import signal

    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert signal("pdq", HEX, expires_at="2030-01-01T00:00:00Z").expires_at == when.timestamp()
    assert signal("pdq", HEX, expires_at="2030-01-01").expires_at == when.timestamp()
    assert signal("pdq", HEX, expires_at=when).expires_at == when.timestamp()
    assert signal("pdq", HEX, expires_at=5).expires_at == 5.0
    with pytest.raises(ValueError, match="not a time"):
        signal("pdq", HEX, expires_at="next tuesday")


def test_remote_health_exits_zero_only_when_serving(served):
    ok = CliRunner().invoke(cli, ["remote", "--server", served.target, "health"])
    assert ok.exit_code == 0 and json.loads(ok.output) == {"status": "SERVING"}
    nobody = f"127.0.0.1:{_free_port()}"
    down = CliRunner().invoke(cli, ["remote", "--server", nobody, "--timeout", "1", "health"])
    assert down.exit_code == 1 and "UNAVAILABLE" in down.output
    waited = CliRunner().invoke(cli, ["remote", "--server", nobody, "health", "--wait", "0.5"])
    assert waited.exit_code == 1 and "did not become SERVING within 0.5 s" in waited.output


@pytest.mark.parametrize("args", [["--timeout", "1", "health"], ["health", "--wait", "1"]])
def test_remote_health_keeps_its_timeout_against_a_server_that_never_answers(args):
    """A listener that accepts and never speaks (a hung server, a black-holing proxy):
    each health check took its own 5 s, so a probe with a shorter timeout of its own
    killed the command instead of hearing it exit 1. The time is taken from the
    command's connection (the listener's accept) to the end of its ``main()``: timed
    from ``main()``'s start it included the command's lazy imports, and a loaded CI
    took 5.7 s with a 1 s timeout (the monotonic clock is one for both processes)."""
    timed = (
        "import sys, time\nfrom hashmatch.server.cli import main\n"
        "try:\n    main()\nfinally:\n"
        "    print(f'ended {time.monotonic():.3f}', file=sys.stderr)"
    )
    with socket.create_server(("127.0.0.1", 0)) as listener:
        held: list[tuple[socket.socket, float]] = []
        threading.Thread(
            target=lambda: held.append((listener.accept()[0], time.monotonic())), daemon=True
        ).start()
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-c", timed, "remote", "--server", target, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1 and "DEADLINE_EXCEEDED" in done.stderr, done.stderr
        assert held, f"the command never connected: {done.stderr}"
        ended = float(re.search(r"ended (\d+\.\d+)", done.stderr).group(1))
        took = ended - held[0][1]
        assert took < 4.0, (took, done.stderr)  # its own 1 s (a health check alone took 5 s)
        for sock, _ in held:
            sock.close()


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_remote_refuses_a_timeout_that_is_not_positive(served, timeout):
    """Every call with a deadline of 0 s or less failed DEADLINE_EXCEEDED, which reads
    like a slow server: a usage error says what is wrong."""
    result = _remote(served, "lists", options=("--timeout", timeout))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout'" in result.output


def test_remote_match_of_a_vpdq_hash_file_matches_it_as_a_video(served, tmp_path):
    """A vPDQ hash file given to --media was sent as media bytes (the server answered
    "not an image"); `hashmatch match` reads it as the video's frames, so does remote."""
    clip = tmp_path / "clip.vpdq"  # vPDQ's text format: frame,quality,hash,timestamp
    clip.write_text("".join(f"{i},90,{format(i + 7, '064x')},{i}.0\n" for i in range(4)))
    assert _remote(served, "ingest", "remote-videos", str(clip)).exit_code == 0
    image = tmp_path / "photo.png"
    Image.fromarray(data.camera()).save(image)
    result = _remote(
        served, "match", "--media", str(clip), "--media", str(image), "--list", "remote-videos"
    )
    assert result.exit_code == 0, result.output
    photo, video = (json.loads(line) for line in result.output.splitlines())
    assert (photo["source"], photo["index"]) == ("SOURCE_MEDIA", 0)
    assert (video["source"], video["index"]) == ("SOURCE_VIDEO", 0)
    (match,) = video["matches"]
    assert (match["list_name"], match["query_index"]) == ("remote-videos", 1)
    assert match["query_match_pct"] == match["target_match_pct"] == 100.0


def test_remote_match_of_a_videos_te_csv_matches_it_as_the_video(served, tmp_path):
    """``remote match --media listed.csv`` of ``hashmatch hash clip.mp4 --format te``
    sent the CSV as media bytes: the server answered "not an image"."""
    clip = write_video(tmp_path / "clip.mp4", frames=20, seed=13)
    listed = tmp_path / "listed.csv"
    listed.write_text(CliRunner().invoke(cli, ["hash", str(clip), "--format", "te"]).output)
    assert _remote(served, "ingest", "te-match", str(listed)).exit_code == 0
    result = _remote(served, "match", "--media", str(listed), "--list", "te-match")
    assert result.exit_code == 0, result.output
    (video,) = (json.loads(line) for line in result.output.splitlines())
    assert (video["source"], video["index"]) == ("SOURCE_VIDEO", 0)
    (match,) = video["matches"]
    assert match["query_match_pct"] == match["target_match_pct"] == 100.0


def test_remote_ingest_reads_a_videos_te_row_as_local_ingest_does(served, tmp_path):
    """`hashmatch hash --format te` (HMA's CSV) gives a video's frames as a JSON list in
    signal_value: `remote ingest` sent that text as the hex ('vpdq hash must be 64 hex
    characters, got 234'), where local `ingest` reads the frames."""
    clip = write_video(tmp_path / "clip.mp4", seed=12)
    te = CliRunner().invoke(cli, ["hash", str(clip), "--format", "te"]).output
    listed = tmp_path / "listed.csv"
    listed.write_text(te)
    result = _remote(served, "ingest", "te-videos", str(listed))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["added"] == 1
    listed.write_text(te + 'vpdq,"[""zz,100,0.0""]"\n')  # a bad frame: named by line
    reply = json.loads(_remote(served, "ingest", "te-videos", str(listed)).output.splitlines()[0])
    assert (reply["unchanged"], reply["unparsed_total"]) == (1, 1)
    assert reply["unparsed"] == [
        "line 3: frame 0: expected '<64 hex>,quality,timestamp', got 'zz,100,0.0'"
    ]


def test_remote_ingest_names_types_as_local_ingest_does_spaces_and_case(served, tmp_path):
    """A CSV whose type column reads `` vpdq`` (a spreadsheet's ``, `` separator): local
    ``ingest`` stored the video, ``remote ingest`` compared ``signal_type.lower()`` with
    "vpdq" and sent the frame list as one hash ('vpdq hash must be 64 hex characters,
    got 234'). Both now name types with ``signal_types.get``: the same rows stored."""
    import sqlite3

    clip = write_video(tmp_path / "clip.mp4", seed=13)
    te = CliRunner().invoke(cli, ["hash", str(clip), "--format", "te"]).output
    video = te.splitlines()[1]  # under the header: `vpdq,"[...]"`
    rows = [
        f" {video.strip()}",
        f" pdq,{'1e' * 32}",
        f"PDQ ,{'2f' * 32}",
        f" hash_md5 ,{'ab' * 16}",
    ]
    listed = tmp_path / "spaced.csv"
    listed.write_text("signal_type,signal_value,labels\n" + "".join(f"{r},x\n" for r in rows))
    local = tmp_path / "local"
    done = CliRunner().invoke(
        cli, ["ingest", str(listed), "--list", "spaced", "--data-dir", str(local)]
    )
    assert "added 4, updated 0, unchanged 0, rejected 0" in done.output, done.output
    result = _remote(served, "ingest", "spaced", str(listed))
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output.splitlines()[0])
    assert (reply["added"], reply.get("rejected", 0)) == (4, 0), reply

    def stored(data_dir) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"{data_dir}/store.sqlite")) as conn:
            return conn.execute(
                "SELECT s.signal_type, hex(s.code), s.labels, (SELECT COUNT(*) FROM"
                " signal_frames f WHERE f.signal_id = s.id) FROM signals s JOIN hash_lists l"
                " ON l.id = s.list_id WHERE l.name = 'spaced' ORDER BY 1, 2"
            ).fetchall()

    assert stored(served.server.host.config.data_dir) == stored(local)
    assert [row[0] for row in stored(local)] == ["md5", "pdq", "pdq", "vpdq"]


def test_remote_ingest_takes_a_te_simple_dumps_type_from_its_name(served, tmp_path):
    """`remote ingest` defaulted --type to pdq for every file, so a ThreatExchange dump
    named simple.HASH_VIDEO_MD5.te went in as PDQ (every row rejected); bare hex lines
    take --type (required for them, as for the local verb)."""
    dump = tmp_path / "simple.HASH_VIDEO_MD5.te"
    dump.write_text(f"{'ab' * 16},1001,2026-11-30T18:47:52+0000,media_type_video\n")
    result = _remote(served, "ingest", "te-dumps", str(dump))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["added"] == 1
    bare = tmp_path / "bare.txt"
    bare.write_text(f"{'cd' * 32}\n")
    result = _remote(served, "ingest", "te-dumps", str(bare), "--type", "pdq")
    assert result.exit_code == 0, result.output
    found = _remote(served, "match", f"pdq:{'cd' * 32}", f"md5:{'ab' * 16}").output
    assert "te-dumps" in found and found.count("te-dumps") >= 2, found


def test_remote_match_of_a_video_hashes_it_as_vpdq_by_default(served, tmp_path):
    """As local `match clip.mp4` does: the server's default type (pdq) refused it,
    'looks like a video (MP4/MOV); hash it as vpdq', naming no --media-type."""
    clip = write_video(tmp_path / "clip.mp4", seed=11)
    listed = tmp_path / "listed.csv"
    listed.write_text(CliRunner().invoke(cli, ["hash", str(clip), "--format", "te"]).output)
    ingested = _remote(served, "ingest", "remote-videos", str(listed))
    assert ingested.exit_code == 0, ingested.output
    result = _remote(served, "match", "--media", str(clip))
    assert result.exit_code == 0, result.output
    (reply,) = [json.loads(line) for line in result.output.splitlines()]
    assert [c["signal_type"] for c in reply["computed"]] == ["vpdq"]
    assert [(m["list_name"], m["query_match_pct"]) for m in reply["matches"]] == [
        ("remote-videos", 100.0)
    ]
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(photo)
    mixed = _remote(served, "match", "--media", str(clip), "--media", str(photo))
    assert mixed.exit_code == 2 and "images and videos go in separate calls" in mixed.output


def test_serving_line_names_the_port_an_ephemeral_listen_got(tmp_path):
    """`--listen 127.0.0.1:0` said 'hashmatch serving on 127.0.0.1:0': no way to tell
    where to connect from the line that says the server is ready."""
    with serve_no_auth(tmp_path, "127.0.0.1:0") as seen:
        address = served_address(seen)
        assert address.startswith("127.0.0.1:") and address != "127.0.0.1:0", seen
        with HashmatchClient(address, retries=0) as client:
            assert client.health() == "SERVING"


def test_the_readme_sync_example_runs(served):
    """The README's client example, run as written (it used `token` and `hex_hash`
    without defining them: a NameError for whoever pasted it)."""
    done = run_python_example("Python client (bearer token", served)
    assert done.returncode == 0, done.stderr
    assert "('partner-a', 0)" in done.stdout, done.stdout


def test_remote_ingest_of_plain_hex_needs_its_type_as_the_local_verb(served, tmp_path):
    """`remote ingest` took plain hex as pdq unless told: a list of MD5s sent without
    --type was rejected line by line ("pdq hash must be 64 hex characters, got 32")
    where `hashmatch ingest` asks for the type. 64 hex digits are a PDQ or a SHA-256:
    the length cannot tell, so neither verb guesses."""
    md5s = tmp_path / "md5.txt"
    md5s.write_text("".join(f"{i:032x}\n" for i in range(3)))
    result = _remote(served, "ingest", "md5-list", str(md5s))
    assert result.exit_code == 1
    assert "plain hex lines carry no type: give the signal type (--type pdq)" in result.output
    assert "64 hex characters" not in result.output
    assert not [x for x in _remote(served, "lists").output.splitlines() if "md5-list" in x]
    result = _remote(served, "ingest", "md5-list", str(md5s), "--type", "md5")
    assert result.exit_code == 0 and json.loads(result.stdout)["added"] == 3, result.output


def test_remote_ingest_reads_a_pipe(served, tmp_path):
    """`remote ingest L <(generate-hashes)`: the file is read twice (a count, then the
    send), a pipe only once, so it is copied first as stdin is; a named pipe's name
    still tells its format. /dev/zero is refused before anything is read or sent."""
    import os
    import threading

    read_end, write_end = os.pipe()
    rows = "signal_type,signal_value\n" + "".join(f"pdq,{i:064x}\n" for i in range(1, 4))

    def feed() -> None:
        with os.fdopen(write_end, "w") as out:
            out.write(rows)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    result = _remote(served, "ingest", "piped", f"/dev/fd/{read_end}")
    writer.join(5)
    assert result.exit_code == 0 and json.loads(result.stdout)["added"] == 3, result.output
    fifo = tmp_path / "videos.vpdq"
    os.mkfifo(fifo)
    clip = "".join(f"{i},90,{i + 7:064x},{i}.0\n" for i in range(3))
    feeder = threading.Thread(target=fifo.write_text, args=(clip,), daemon=True)
    feeder.start()
    result = _remote(served, "ingest", "piped-videos", str(fifo))
    feeder.join(5)
    assert result.exit_code == 0 and json.loads(result.stdout)["added"] == 1, result.output
    result = _remote(served, "ingest", "piped", "/dev/zero", "--type", "pdq")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: /dev/zero: not a regular file or pipe but a character device"
    )


def test_remote_ingest_of_a_pipe_or_stdin_names_signals_as_local_ingest(served, tmp_path):
    """A vPDQ file's stem is its video's external id, and a te-simple dump's name its
    type: a named pipe was copied to hashmatch-ingest-XXXXXXXX-<name>, so a video sent
    by `remote ingest L clip7.vpdq` (a FIFO) was stored as 'hashmatch-ingest-a7_c9yr9-clip7'
    and HMA's pdq.csv was refused for naming no type; from stdin, which names nothing
    (`hashmatch ingest -` stores no id), the temp file's name was the id."""
    import os
    import threading

    clip = "".join(f"{i},90,{i + 40:064x},{i}.0\n" for i in range(3))
    fifo = tmp_path / "clip7.vpdq"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=fifo.write_text, args=(clip,), daemon=True)
    feeder.start()
    result = _remote(served, "ingest", "fifo-videos", str(fifo))
    feeder.join(5)
    assert result.exit_code == 0 and json.loads(result.stdout)["added"] == 1, result.output
    dump = tmp_path / "pdq.csv"  # HMA's sample data: headerless, the type in the name
    os.mkfifo(dump)
    rows = f"{50:064x},7,2020-01-01,tag1 tag2\n"
    feeder = threading.Thread(target=dump.write_text, args=(rows,), daemon=True)
    feeder.start()
    result = _remote(served, "ingest", "fifo-dump", str(dump))
    feeder.join(5)
    assert result.exit_code == 0 and json.loads(result.stdout)["added"] == 1, result.output
    clip = "".join(f"{i},90,{i + 60:064x},{i}.0\n" for i in range(3))
    result = _remote(served, "ingest", "stdin-clips", "-", "--format", "vpdq", input=clip)
    assert result.exit_code == 0 and json.loads(result.stdout)["added"] == 1, result.output
    store = served.engine.store
    assert [s.external_id for s in store.iter_signals("fifo-videos")] == ["clip7"]
    assert [s.external_id for s in store.iter_signals("fifo-dump")] == ["7"]
    assert [s.external_id for s in store.iter_signals("stdin-clips")] == [None]


def test_remote_ingest_names_a_file_refused_whole_and_skips_leading_comments(served, tmp_path):
    """`Error: header: CSV header lacks ...` named no file; a partner's CSV led by
    `# exported from X, on DATE` was refused so (its comment read as the header)."""
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,name\n1,{HEX}\n")
    result = CliRunner().invoke(
        cli,
        ["remote", "--server", served.target, "--token", served.tokens["ops"], "ingest",
         "named", str(bad)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"Error: {bad}: header: CSV header lacks column(s)" in result.stderr
    good = tmp_path / "good.csv"
    good.write_text(f"# exported from X, on 2026-12-01\nsignal_type,signal_value\npdq,{HEX}\n")
    result = _remote(served, "ingest", "commented", str(good))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 1


def test_remote_lists_with_none_visible_says_so_and_what_to_do(served):
    """A tenant no list is shared with got no output at all: not as whom it asked, nor
    that a grant on the server is what it lacks."""
    result = _remote(served, "lists", tenant="reader")
    assert result.exit_code == 0 and result.stdout == ""
    store_id = served.client("ops").list_hash_lists().store_id
    assert result.stderr == (
        f"hashmatch: no hash list is visible to tenant 'reader' (store {store_id}): none"
        " shared with it yet (on the server: `hashmatch tenants grant reader LIST`), or"
        " the store holds none\n"
    )


def test_remote_lists_with_none_on_a_server_without_auth_says_the_store_holds_none(tmp_path):
    """A no-auth server (answered without a token) shows every list: its empty answer
    was told to grant a list to tenant 'local', which changes nothing there."""
    with running_server(tmp_path / "data") as ts:
        result = CliRunner().invoke(cli, ["remote", "--server", ts.target, "lists"])
        store_id = ts.engine.store.store_id()
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == (
        f"hashmatch: the server's store (store {store_id}) holds no hash list (it answered"
        " without a token: no authentication, every list is visible)\n"
    )


class _AsAnOlderServer(grpc.ServerInterceptor):
    """ListHashLists answered without its tenant and store_id (fields an older server
    lacks)."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.endswith("/ListHashLists"):
            return handler

        def behavior(request, context):
            reply = handler.unary_unary(request, context)
            reply.ClearField("tenant")
            reply.ClearField("store_id")
            return reply

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def test_remote_lists_with_none_from_an_older_server_names_no_empty_tenant(tmp_path):
    """Its reply names no tenant nor store: the note said tenant '' and `tenants grant ''
    LIST`."""
    tenants = {"reader": (["match"], False)}
    with running_server(tmp_path / "data", tenants=tenants,
                        extra_interceptors=[_AsAnOlderServer()]) as ts:  # fmt: skip
        given = ["--server", ts.target, "--token", ts.tokens["reader"]]
        result = CliRunner().invoke(cli, ["remote", *given, "lists"])
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == (
        "hashmatch: no hash list is visible to this token's tenant: none shared with it yet"
        " (on the server: `hashmatch tenants grant TENANT LIST`), or the store holds none\n"
    )


def test_remote_lists_says_whose_store_and_which_tenant(served):
    """ListHashLists answers with the server's ``store_id`` (whose list uids these are)
    and the caller's ``tenant``; ``remote lists`` printed the lists alone and dropped
    both. Each list's line carries them now."""
    client = served.client("ops")
    client.ingest("whose-list", [signal("pdq", HEX)])
    result = _remote(served, "lists")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    (mine,) = [line for line in lines if line["name"] == "whose-list"]
    reply = client.list_hash_lists()
    assert reply.store_id and mine["store_id"] == reply.store_id
    assert mine["tenant"] == "ops" == reply.tenant
    assert {line["store_id"] for line in lines} == {reply.store_id}
