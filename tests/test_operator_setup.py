"""What an operator runs to set a server up: ``hashmatch token``, ``hashmatch serve``
start-up checks, SIGHUP reloads, and ``hashmatch remote`` connection options."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from thread_stacks import wait_running

from hashmatch.server import auth
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.server.testing import self_signed_cert
from hashmatch.v1 import common_pb2, matcher_pb2

SERVE = "from hashmatch.server.cli import main; main()"  # cli.py has no __main__


def _token(*args: str, env: dict[str, str] | None = None):
    env = {"HASHMATCH_CONFIG": None, "HASHMATCH_DATA_DIR": None, "HASHMATCH_AUTH_FILE": None,
           **(env or {})}  # fmt: skip
    return CliRunner().invoke(cli, ["token", *args], env=env)


def _tenant(path, token: str) -> auth.Principal:
    return auth.TokenAuth.from_file(path).authenticate([("authorization", f"Bearer {token}")])


@pytest.mark.parametrize("name", ["a.b", "my tenant", 'x"]y'])
def test_token_for_an_awkward_tenant_name_stays_one_tenant(tmp_path, name):
    path = tmp_path / "auth.toml"
    made = _token(name, "--auth-file", str(path))
    assert made.exit_code == 0, made.output
    assert _tenant(path, made.stdout.strip()).tenant == name
    assert name in tomllib.loads(path.read_text())["tenants"]
    again = _token(name, "--auth-file", str(path))  # the duplicate check sees the quoted key
    assert again.exit_code == 1 and "already exists" in again.output


def test_a_tokens_file_read_waits_for_hashmatch_token_to_finish_its_append(tmp_path):
    """A reload (SIGHUP, or a start) read the file while `hashmatch token` was appending
    under its lock: half an entry is not TOML, so the old tokens were kept and the new
    one refused. The read now waits for the lock; one held too long is an OSError."""
    from concurrent import futures

    from hashmatch.server.commands.service import _locked_for_append

    path = tmp_path / "auth.toml"
    assert _token("first", "--auth-file", str(path)).exit_code == 0
    entry = auth.tenant_entry("late", "late-token", ["match"], all_lists=False)
    with futures.ThreadPoolExecutor(1) as pool:
        with _locked_for_append(path) as fh:  # as `hashmatch token` appends
            fh.write("\n" + entry[: len(entry) // 2])
            fh.flush()
            with pytest.raises(TimeoutError):
                auth.read_tokens_file(path, wait=0.2)
            read = pool.submit(auth.TokenAuth.from_file, path)
            # in its wait for the lock (was a 0.3 s sleep: a read not yet begun passed too)
            assert wait_running("read_tokens_file", 30), "the read never began"
            assert not read.done()
            fh.write(entry[len(entry) // 2 :])
        loaded = read.result(timeout=20)
    late = loaded.authenticate([("authorization", "Bearer late-token")])
    assert late.tenant == "late" and late.roles == frozenset({"match"})


@pytest.mark.parametrize("name", ["", "  ", "new\nline"])
def test_token_refuses_an_empty_or_control_character_name(tmp_path, name):
    made = _token(name, "--auth-file", str(tmp_path / "auth.toml"))
    assert made.exit_code == 1 and "Traceback" not in made.output
    assert "tenant" in made.output and len(made.output.strip().splitlines()) == 1
    assert not (tmp_path / "auth.toml").exists()


def test_token_on_a_broken_or_unwritable_file_is_one_line(tmp_path):
    broken = tmp_path / "auth.toml"
    broken.write_text("[tenants.my tenant]\n")  # what an unquoted name used to write
    made = _token("acme", "--auth-file", str(broken))
    assert made.exit_code == 1 and "Traceback" not in made.output, made.output
    assert str(broken) in made.output and len(made.output.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the data directory should be
    made = _token("acme", "--auth-file", str(blocker / "auth.toml"))
    assert made.exit_code == 1 and "Traceback" not in made.output, made.output
    assert "auth.toml" in made.output and len(made.output.strip().splitlines()) == 1


def test_token_writes_the_file_the_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the old default ./hashmatch-data would land
    data = tmp_path / "srv-data"
    config = tmp_path / "hm.toml"
    config.write_text(f'[server]\ndata_dir = "{data}"\n')
    made = _token("acme", env={"HASHMATCH_CONFIG": str(config)})
    assert made.exit_code == 0, made.output
    assert _tenant(data / "auth.toml", made.stdout.strip()).tenant == "acme"
    assert not (tmp_path / "hashmatch-data").exists()
    custom = tmp_path / "tokens.toml"
    config.write_text(f'data_dir = "{data}"\nauth_file = "{custom}"\n')
    made = _token("beta", "--config", str(config))
    assert made.exit_code == 0, made.output
    assert _tenant(custom, made.stdout.strip()).tenant == "beta"
    made = _token("gamma", "--config", str(tmp_path / "missing.toml"))
    assert made.exit_code == 1 and "missing.toml" in made.output


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
def test_token_appends_with_the_files_own_line_end(tmp_path, end):
    """A tokens file saved with CRLF (edited on Windows) got LF lines appended: one
    file, two line ends, which editors and diffs then show as changed throughout."""
    path = tmp_path / "auth.toml"
    path.write_bytes(
        end.join(
            [b"# ops' tokens", b"[tenants.ops]", f'tokens_sha256 = ["{"a" * 64}"]'.encode(), b""]
        )
    )
    made = _token("acme", "--role", "match", "--auth-file", str(path))
    assert made.exit_code == 0, made.output
    raw = path.read_bytes()
    assert raw.count(end) == raw.count(b"\n") and raw.count(b"\r") == raw.count(b"\r\n")
    assert raw.count(end) == 8  # the three lines, a blank one, the new tenant's four
    assert _tenant(path, made.stdout.strip()).tenant == "acme"


def _waits_for_a_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked on a file lock (a ``->`` line of /proc/locks)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any(line.split()[1] == "->" and line.split()[-4] == str(pid) for line in lines)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_token_checks_and_appends_under_the_tokens_file_lock(tmp_path):
    """Two `hashmatch token acme` at once both found no acme and both appended it: a
    tokens file with [tenants."acme"] twice is not TOML (the next SIGHUP kept the old
    tokens, the next restart failed). Here this process is the other run, holding the
    lock while it appends acme: the waiting run must then see acme and refuse."""
    import fcntl

    path = tmp_path / "auth.toml"
    assert _token("first", "--auth-file", str(path)).exit_code == 0  # the file exists
    with path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run = subprocess.Popen(
            [sys.executable, "-c", SERVE, "token", "acme", "--auth-file", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(),
        )  # fmt: skip
        while run.poll() is None and not _waits_for_a_lock(run.pid):
            time.sleep(0.01)
        held.write("\n" + auth.tenant_entry("acme", "other run's token", ["match"]))
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1 and "already exists" in err, err
    assert _tenant(path, "other run's token").tenant == "acme"  # the file still loads


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``hashmatch serve`` in a child process, for start-up failures (it exits)."""
    return subprocess.run(
        [sys.executable, "-c", SERVE, "serve", "--listen", "127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=timeout,
        env=_clean_env(),
    )  # fmt: skip


def _one_line_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], done.stderr


def test_serve_with_an_unwritable_tokens_location_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = _serve("--data-dir", str(tmp_path / "d"), "--auth-file", str(blocker / "auth.toml"))
    _one_line_error(done, "auth.toml", "cannot create the tokens file")


class Served:
    """``hashmatch serve`` running in a child process; its stderr collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--listen", f"127.0.0.1:{self.port}",
             "--metrics-port", "-1", *args],
            stderr=subprocess.PIPE, text=True,
            env={**_clean_env(), "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[-1]
            if self.proc.poll() is not None and not any(text in line for line in self.lines):
                time.sleep(0.2)  # let the reader thread take the last lines
                if not any(text in line for line in self.lines):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in serve's output: {''.join(self.lines)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}


def _sighup_after(tmp_path, spoil, waited: str) -> str:
    """Start serve, ``spoil(tokens_file)``, SIGHUP it: the log line with ``waited``,
    once the old admin token was checked to still work (and serve to be up)."""
    data = tmp_path / "data"
    served = Served("--data-dir", str(data))
    try:
        served.wait_for("serving on")
        token = (data / "admin.token").read_text().strip()
        spoil(data / "auth.toml")
        served.proc.send_signal(signal.SIGHUP)
        line = served.wait_for(waited)
        with HashmatchClient(f"127.0.0.1:{served.port}", token=token, retries=0) as admin:
            admin.wait_until_serving(60)
            assert admin.stats().total_signals == 0  # still authenticated
        assert served.proc.poll() is None
        return line
    finally:
        served.stop()


def test_sighup_keeps_the_old_tokens_when_the_file_holds_none(tmp_path):
    line = _sighup_after(
        tmp_path, lambda f: f.write_text("# every tenant removed by mistake\n"), "tokens:"
    )
    assert "kept the old tokens" in line and "no tokens" in line, line


def test_sighup_logs_its_outcome_and_warns_of_a_tokens_file_others_can_write(tmp_path):
    """The writable-tokens-file warning came at start-up only, though a file chmod-ed or
    replaced since is the one a reload trusts; and "reloaded ..." was printed past the
    logging setup (log_level did not apply to it)."""
    data = tmp_path / "data"
    served = Served("--data-dir", str(data), env={"HASHMATCH_LOG_LEVEL": "WARNING"})
    try:
        with HashmatchClient(f"127.0.0.1:{served.port}") as probe:  # "serving on" is INFO
            probe.wait_until_serving(60)
        (data / "auth.toml").chmod(0o666)
        served.proc.send_signal(signal.SIGHUP)
        assert "chmod go-w" in served.wait_for("auth.toml is writable by others (mode 666)")
        (data / "auth.toml").write_text("# every tenant removed by mistake\n")
        served.proc.send_signal(signal.SIGHUP)  # handled after the first: its lines are out
        served.wait_for("kept the old tokens")
        assert not [line for line in served.lines if "reloaded" in line], served.lines
    finally:
        served.stop()


def test_serve_says_its_start_and_drain_through_its_log(tmp_path):
    """The --insecure-no-auth warning, "serving on" and "draining" were printed past the
    logging (four lines for the warning): a log set up by whoever runs serve (here, to
    a file, with each line's logger and level) did not get them, nor did log_level
    apply. Now each is one line of the server's log, and nothing else is printed."""
    log_file = tmp_path / "serve.log"
    port = _free_port()
    logged = (
        "import logging, sys; logging.basicConfig(filename=sys.argv.pop(1),"
        " format='%(name)s %(levelname)s %(message)s'); " + SERVE
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", logged, str(log_file), "serve", "--insecure-no-auth",
         "--listen", f"127.0.0.1:{port}", "--metrics-port", "-1",
         "--data-dir", str(tmp_path / "data")],
        stderr=subprocess.PIPE, text=True, env={**_clean_env(), "PYTHONFAULTHANDLER": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "serving on" not in (log_file.read_text() if log_file.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "serve never served"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:  # the drain is bounded (drain_seconds + slack), the exit too (exit_guard)
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # where it hung: faulthandler's dump on SIGABRT
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=30)
            hung = f"serve hung after SIGTERM: {log_file.read_text()}{stderr}"
            raise AssertionError(hung) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and stderr == "", stderr
    lines = log_file.read_text().splitlines()
    # one warning about it (before, two: serve's own and the server's start-up's)
    assert len([line for line in lines if "WARNING" in line and "admin" in line]) == 1, lines
    expected = [
        "hashmatch.server WARNING NO AUTHENTICATION (--insecure-no-auth): every caller is an"
        " admin of every list; use it only on a machine you alone use",
        f"hashmatch.server INFO hashmatch serving on 127.0.0.1:{port} (data ",
        "hashmatch.server INFO signal 15: draining (up to ",
    ]
    for start in expected:
        assert len([line for line in lines if line.startswith(start)]) == 1, lines


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('index_kind = "hnsw"', "index_kind: unknown index kind 'hnsw'"),
        ("metrics_port = 70000", "metrics_port: must be -1"),
        ("listen = 45002", "listen: must be a string"),
        ('drain_seconds = "soon"', "drain_seconds: not a number"),
        ("[server\n", "hm.toml: not valid TOML"),
    ],
)
def test_serve_refuses_a_bad_config_at_start_up_in_one_line(tmp_path, toml, expected):
    path = tmp_path / "hm.toml"
    path.write_text(toml + ("\n" if "metrics_port" in toml else "\nmetrics_port = -1\n"))
    done = _serve("--config", str(path), "--data-dir", str(tmp_path / "d"))
    _one_line_error(done, expected)
    assert not (tmp_path / "d").exists()  # nothing created before the config is checked


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 100])
def test_serve_exits_when_the_index_cannot_load(tmp_path, content):
    data = tmp_path / "data"
    data.mkdir()
    (data / "store.sqlite").write_bytes(content)
    done = _serve("--data-dir", str(data), "--insecure-no-auth", "--metrics-port", "-1")
    _one_line_error(done, f"the index failed to load from {data}", "store.sqlite")
    # "serving" is said only once the index has loaded: before, it came first anyway
    assert "serving on" not in done.stderr, done.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for certs")
def test_serve_names_the_tls_file_that_is_wrong(tmp_path):
    key_a, cert_a = self_signed_cert(tmp_path, "a")
    key_b, _ = self_signed_cert(tmp_path, "b")
    common = ("--data-dir", str(tmp_path / "d"), "--insecure-no-auth", "--metrics-port", "-1")
    done = _serve(*common, "--tls-cert", cert_a, "--tls-key", key_b)
    _one_line_error(done, f"tls_key {key_b}: not the private key of tls_cert {cert_a}")
    done = _serve(*common, "--tls-cert", cert_a, "--tls-key", key_a, "--tls-client-ca", key_a)
    _one_line_error(done, f"tls_client_ca {key_a}: no PEM certificate")
    done = _serve(*common, "--tls-cert", key_a, "--tls-key", key_a)
    _one_line_error(done, f"tls_cert {key_a}: no PEM certificate")


class NotifySocket:
    """systemd's side of ``sd_notify``: an abstract AF_UNIX datagram socket."""

    def __init__(self) -> None:
        self.name = f"@hashmatch-test-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.seen: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = 60) -> dict[str, str]:
        """The next message holding ``key`` (earlier ones are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.splitlines())
            self.seen.append(fields)
            if key in fields:
                return fields
        raise AssertionError(f"no {key} from serve; got {self.seen}")

    def close(self) -> None:
        self.sock.close()


def _health(port: int) -> str:
    with HashmatchClient(f"127.0.0.1:{port}", retries=0) as client:
        return client.health(timeout=10)


def test_serve_tells_systemd_ready_only_once_serving_then_reloading_and_stopping(tmp_path):
    notify = NotifySocket()
    served = Served("--data-dir", str(tmp_path / "data"), "--insecure-no-auth",
                    env={"NOTIFY_SOCKET": notify.name})  # fmt: skip
    try:
        ready = notify.wait_for("READY")
        assert ready["READY"] == "1" and "serving on" in ready["STATUS"], ready
        assert any("loading the index" in m.get("STATUS", "") for m in notify.seen)
        assert _health(served.port) == "SERVING"  # ready meant lookups are answered
        served.proc.send_signal(signal.SIGHUP)  # --insecure-no-auth: nothing to reload
        served.proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1" and "draining" in stopping["STATUS"]
        assert served.proc.wait(timeout=30) == 0
    finally:
        served.stop()
        notify.close()


def test_serve_brackets_a_token_reload_for_systemd(tmp_path):
    notify = NotifySocket()
    served = Served("--data-dir", str(tmp_path / "data"), env={"NOTIFY_SOCKET": notify.name})
    try:
        notify.wait_for("READY")
        served.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        # systemd's notify-reload wants the reload's CLOCK_MONOTONIC time (microseconds)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now - int(reloading["MONOTONIC_USEC"]) < 60_000_000, reloading
        assert notify.wait_for("READY")["READY"] == "1"
        served.wait_for("reloaded")
    finally:
        served.stop()
        notify.close()


def test_serve_never_tells_systemd_ready_when_the_index_cannot_load(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "store.sqlite").write_bytes(b"")
    notify = NotifySocket()
    served = Served("--data-dir", str(data), "--insecure-no-auth",
                    env={"NOTIFY_SOCKET": notify.name})  # fmt: skip
    try:
        assert served.proc.wait(timeout=60) == 1
        status = notify.wait_for("STATUS", timeout=5)
        while "failed to load" not in status["STATUS"]:
            status = notify.wait_for("STATUS", timeout=5)
        assert "store.sqlite" in status["STATUS"], status
        assert not any("READY" in m for m in notify.seen), notify.seen
    finally:
        served.stop()
        notify.close()


def test_notify_is_a_no_op_outside_systemd_and_never_raises(monkeypatch, tmp_path):
    from hashmatch.server import sdnotify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))  # supervisor went away
    assert sdnotify.notify("READY=1") is False
    notify = NotifySocket()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", notify.name)
        assert sdnotify.notify("READY=1", "STATUS=two\nlines") is True
        assert notify.wait_for("READY", timeout=5) == {"READY": "1", "STATUS": "two lines"}
    finally:
        notify.close()


def test_notify_never_blocks_on_a_supervisor_that_stopped_reading(monkeypatch, tmp_path):
    """The socket's queue full (nobody reads it): notify returns False at once; a
    blocking send hung serve, in its SIGTERM handler too."""
    from hashmatch.server import sdnotify

    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    sent: list[bool] = []
    sender = threading.Thread(
        target=lambda: sent.extend(sdnotify.notify(f"STATUS={i}") for i in range(200)),
        daemon=True,
    )
    try:
        sender.start()
        sender.join(timeout=30)
        assert not sender.is_alive(), f"notify blocked after {len(sent)} datagrams"
        assert sent[0] is True and sent[-1] is False, sent  # the queue filled, then refused
    finally:
        unread.close()


DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"


def test_the_example_config_loads_as_written():
    from hashmatch.server import config

    loaded = config.load(DEPLOY / "hashmatch.toml", environ={})
    assert str(loaded.data_dir) == "/var/lib/hashmatch" and loaded.shards == 0
    unit = (DEPLOY / "hashmatch.service").read_text()
    assert "--config /etc/hashmatch/hashmatch.toml" in unit
    assert "StateDirectory=hashmatch" in unit  # the unit makes the config's data_dir


def test_the_unit_keeps_compiled_code_in_its_cache_directory():
    """Under ProtectSystem=strict the install (/opt/hashmatch) is read-only: numba's
    kernels and Python's bytecode are only kept if the unit points them at its
    CacheDirectory (bytecode was not: every start compiled every module again)."""
    unit = (DEPLOY / "hashmatch.service").read_text()
    assert "ProtectSystem=strict" in unit
    cache = "/var/cache/" + unit.split("\nCacheDirectory=")[1].split()[0] + "/"
    env = dict(line.split("=", 2)[1:] for line in unit.splitlines()
               if line.startswith("Environment="))  # fmt: skip
    for variable in ("NUMBA_CACHE_DIR", "PYTHONPYCACHEPREFIX"):
        assert env.get(variable, "").startswith(cache), (variable, env)


def test_serve_starts_with_the_example_config(tmp_path):
    """Loading is not serving: the example config must also bind, load and answer (only
    the data dir and ports moved here, as the unit's state directory is not ours)."""
    served = Served("--config", str(DEPLOY / "hashmatch.toml"), "--data-dir", str(tmp_path),
                    "--metrics-port", "0")  # fmt: skip
    try:
        served.wait_for("serving on")
        assert _health(served.port) == "SERVING"
    finally:
        served.stop()
    assert served.proc.returncode == 0, "".join(served.lines)


def test_the_units_sudo_commands_run_as_written(tmp_path):
    """The commands the unit's header gives an operator (`#   sudo -u hashmatch ...`) run
    with only its paths moved under tmp_path: as first written, `hashmatch lists ls` was
    not found (sudo's PATH lacks the venv) and numba compiled into the data dir."""
    import shlex

    unit = (DEPLOY / "hashmatch.service").read_text()
    exe = "/opt/hashmatch/.venv/bin/hashmatch"
    assert f"ExecStart={exe} serve" in unit
    numba_cache = unit.split("Environment=NUMBA_CACHE_DIR=")[1].split()[0]
    lines = [ln[1:].strip() for ln in unit.splitlines() if ln.startswith("#   sudo -u")]
    assert len(lines) == 2, lines
    config = tmp_path / "etc" / "hashmatch.toml"
    config.parent.mkdir()
    moved = {"/var/lib/": f"{tmp_path}/var/lib/", "/var/cache/": f"{tmp_path}/var/cache/"}
    text = (DEPLOY / "hashmatch.toml").read_text()
    config.write_text(text.replace("/var/lib/", moved["/var/lib/"]))
    here = shutil.which("hashmatch") or str(Path(sys.executable).parent / "hashmatch")
    data = tmp_path / "var" / "lib" / "hashmatch"
    # the data dir as the service's first start leaves it: a store
    made = CliRunner().invoke(cli, ["lists", "create", "partner-a", "--data-dir", str(data)])
    assert made.exit_code == 0, made.output
    for line in lines:
        argv = shlex.split(line)[3:]  # past `sudo -u hashmatch`
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HASHMATCH_", "NUMBA_"))}
        while "=" in argv[0]:
            key, value = argv.pop(0).split("=", 1)
            for old, new in moved.items():
                value = value.replace(old, new)
            env[key] = value
        assert argv[0] == exe, f"not the venv's path (sudo's PATH lacks it): {line}"
        if argv[1] != "token":  # a store verb: it may search, so compile kernels
            assert line.count(f"NUMBA_CACHE_DIR={numba_cache} ") == 1, line
        argv = [here] + [str(config) if a == "/etc/hashmatch/hashmatch.toml" else a
                         for a in argv[1:]]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (line, done.stdout + done.stderr)
    assert "acme" in tomllib.loads((data / "auth.toml").read_text())["tenants"]
    assert not (data / ".cache").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path):
    """systemd-analyze names unknown keys, bad values and a missing ExecStart binary;
    it checks the unit as written, with ExecStart pointed at this install."""
    here = shutil.which("hashmatch") or str(Path(sys.executable).parent / "hashmatch")
    assert Path(here).exists(), here
    unit = (DEPLOY / "hashmatch.service").read_text()
    assert "/opt/hashmatch/.venv/bin/hashmatch serve" in unit
    (tmp_path / "hashmatch.service").write_text(
        unit.replace("/opt/hashmatch/.venv/bin/hashmatch", here)
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "hashmatch.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


def test_first_start_shows_the_admin_token_on_a_terminal_only(tmp_path):
    """On a terminal the operator sees the token once; in a log (pipe) only its file."""
    data = tmp_path / "data"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--listen", "127.0.0.1:0", "--data-dir",
         str(data), "--metrics-port", "-1"],
        stderr=slave, stdout=subprocess.DEVNULL, env=_clean_env(),
    )  # fmt: skip
    os.close(slave)
    said = b""
    try:
        deadline = time.monotonic() + 60
        while b"serving on" not in said and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                said += os.read(master, 4096)
        token = (data / "admin.token").read_text().strip()
        assert f"export HASHMATCH_TOKEN={token}".encode() in said, said
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(master)


def test_a_sighup_during_the_load_does_not_tell_systemd_ready(tmp_path):
    """A token reload while the index loads must not send READY=1 early: systemd would
    take it for the end of start-up and start the units ordered after hashmatch."""
    notify = NotifySocket()
    served = Served("--data-dir", str(tmp_path / "data"), env={"NOTIFY_SOCKET": notify.name})
    try:
        served.wait_for("listening on")  # the port is open; the index is loading
        served.proc.send_signal(signal.SIGHUP)
        ready = notify.wait_for("READY")
        assert "serving on" in ready.get("STATUS", ""), notify.seen
        assert not any("RELOADING" in m for m in notify.seen), notify.seen
        served.wait_for("reloaded")  # the reload itself still happened
    finally:
        served.stop()
        notify.close()


LATIN1 = "# tenants of the café team\n".encode("latin-1")  # saved by an editor in Latin-1


def test_sighup_with_a_tokens_file_that_is_not_utf8_keeps_serving(tmp_path):
    # used to end serve with a traceback
    line = _sighup_after(
        tmp_path, lambda f: f.write_bytes(LATIN1 + f.read_bytes()), "kept the old tokens"
    )
    assert "auth.toml" in line and "UTF-8" in line, line


def test_a_config_or_tokens_file_that_is_not_utf8_is_one_line(tmp_path):
    config = tmp_path / "hm.toml"
    config.write_bytes(LATIN1 + b"metrics_port = -1\n")
    _one_line_error(_serve("--config", str(config)), "hm.toml", "UTF-8")
    tokens = tmp_path / "auth.toml"
    tokens.write_bytes(LATIN1)
    done = _serve("--data-dir", str(tmp_path / "d"), "--auth-file", str(tokens),
                  "--metrics-port", "-1")  # fmt: skip
    _one_line_error(done, "auth.toml", "UTF-8")
    made = _token("acme", "--auth-file", str(tokens))
    assert made.exit_code == 1 and "Traceback" not in made.output, made.output
    assert "auth.toml" in made.output and "UTF-8" in made.output, made.output


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for certs")
def test_serve_warns_when_its_certificate_has_expired(tmp_path):
    """Every client refuses an expired certificate, and only a client's debug log said
    why; the server started without a word (a renewal that did not happen)."""
    key, csr, cert = (str(tmp_path / name) for name in ("old.key", "old.csr", "old.pem"))
    for command in (  # `openssl req -x509` refuses a negative -days; `x509 -req` takes it
        ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-signkey", key, "-days", "-1", "-out", cert],
    ):  # fmt: skip
        subprocess.run(["openssl", *command], check=True, capture_output=True)
    served = Served("--data-dir", str(tmp_path / "d"), "--tls-cert", cert, "--tls-key", key)
    try:
        line = served.wait_for("has expired")
        assert f"tls_cert {cert}" in line and "clients will refuse" in line, line
    finally:
        served.stop()


def test_a_signal_just_after_the_port_opens_is_not_lost(tmp_path):
    """SIGHUP (and SIGTERM) were handled only from a moment after `listening on`: one
    in between was ignored (a reload silently not done; a test that reloaded on that
    line failed now and then). The window is held open here: systemd's notify socket is
    full, so serve's first notification after the port opens waits until it is read."""
    notify = NotifySocket()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.connect("\0" + notify.name[1:])
        filler.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                filler.send(b"X=1")
    served = Served("--data-dir", str(tmp_path / "data"), env={"NOTIFY_SOCKET": notify.name})
    try:
        served.wait_for("listening on")
        served.proc.send_signal(signal.SIGHUP)  # serve is blocked in sending to the socket
        notify.wait_for("READY")  # reads the queue: serve goes on
        served.wait_for("reloaded")
    finally:
        served.stop()
        notify.close()


def test_a_sighup_during_the_drain_does_not_tell_systemd_ready(tmp_path):
    """After STOPPING=1, a reload's RELOADING=1 + READY=1 told systemd the service was
    ready again while it was stopping. An open MatchStream holds the drain meanwhile."""
    notify = NotifySocket()
    data = tmp_path / "data"
    served = Served("--data-dir", str(data), "--drain-seconds", "30",
                    env={"NOTIFY_SOCKET": notify.name})  # fmt: skip
    release = threading.Event()

    def requests():
        yield matcher_pb2.MatchRequest(
            hashes=[common_pb2.HashValue(signal_type="pdq", hex="ab" * 32)]
        )
        release.wait(60)

    try:
        notify.wait_for("READY")
        token = (data / "admin.token").read_text().strip()
        with HashmatchClient(f"127.0.0.1:{served.port}", token=token, retries=0) as client:
            replies = client.match_stream(requests())
            next(replies)  # the stream is open
            served.proc.send_signal(signal.SIGTERM)
            notify.wait_for("STOPPING")
            served.proc.send_signal(signal.SIGHUP)
            served.wait_for("reloaded")  # the tokens are still reloaded
            release.set()
        assert served.proc.wait(timeout=60) == 0
        with contextlib.suppress(AssertionError):
            notify.wait_for("NOTHING", timeout=1)  # collects what is left in `seen`
        stopping = next(i for i, m in enumerate(notify.seen) if "STOPPING" in m)
        after = notify.seen[stopping:]
        assert not any("READY" in m or "RELOADING" in m for m in after), notify.seen
    finally:
        release.set()
        served.stop()
        notify.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for certs")
def test_sighup_loads_a_renewed_certificate(tmp_path):
    """A renewal (certbot's deploy hook: `systemctl reload hashmatch`) used to change
    nothing until a restart: the server handed out the old certificate until it expired."""
    old_key, old_cert = self_signed_cert(tmp_path, "old")
    new_key, new_cert = self_signed_cert(tmp_path, "new")
    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    shutil.copy(old_key, key)
    shutil.copy(old_cert, cert)
    data = tmp_path / "data"
    served = Served("--data-dir", str(data), "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        served.wait_for("serving on")
        token = (data / "admin.token").read_text().strip()

        def stats(ca: str) -> int:
            with HashmatchClient(f"localhost:{served.port}", token=token, root_certificates=ca,
                                 retries=0) as client:  # fmt: skip
                return client.stats(timeout=10).total_signals

        assert stats(old_cert) == 0
        key.write_text("not a key\n")  # a renewal half done: the served one is kept
        served.proc.send_signal(signal.SIGHUP)
        assert "tls_key" in served.wait_for("kept the old certificate")
        assert stats(old_cert) == 0
        shutil.copy(new_key, key)
        shutil.copy(new_cert, cert)
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for("reloaded the certificate")
        assert stats(new_cert) == 0  # a new connection gets the new certificate
        with pytest.raises(grpc.RpcError):
            stats(old_cert)
    finally:
        served.stop()
