"""Long CLI commands stopped the way people stop them: real subprocesses, real signals.

Ctrl-C is SIGINT to the terminal's whole foreground process group (a scan's workers
and fork server included), a supervisor or ``timeout`` sends SIGTERM. Each must end
the command with one line (no traceback), then the process dies of that signal (a
shell shows 128 + its number; a bash loop stops on Ctrl-C), and leave what was done
usable: a scan commits what its workers returned, records how far it got, writes
no report, and a re-run resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import proc_syscalls
import psutil
import pytest
from PIL import Image
from scan_tree import committed_files
from served_process import serve_no_auth, served_address
from sigint_default import ignoring, sigint_default
from skimage import data

CLI = "from hashmatch.server.entry import main; main()"
N_FILES = 400


def _tree(root: Path) -> None:
    """N_FILES JPEGs (copies of four crops: cheap to write, each hashed on its own)."""
    originals = []
    for i, src in enumerate((data.astronaut(), data.coffee(), data.chelsea(), data.rocket())):
        path = root / f"orig{i}.jpg"
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(src[:256, :256])).save(path, quality=85)
        originals.append(path)
    for i in range(N_FILES - len(originals)):
        target = root / f"d{i % 4}" / f"img{i:04d}.jpg"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(originals[i % len(originals)], target)


def _hashmatch(args: list[str], **kwargs) -> subprocess.Popen:
    """The CLI in a session of its own: its process group stands for a terminal's (and
    SIGINT at its default action, as a terminal's shell starts it)."""
    return subprocess.Popen(
        sigint_default([sys.executable, "-c", CLI, *args]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        **kwargs,
    )


def _blocks_reading_stdin(pid: int, signum: int = signal.SIGINT) -> bool:
    """Whether process ``pid`` has its handler of ``signum`` in and a thread asleep in a read of
    its stdin: the premise of a Ctrl-C "while its input idles", seen in /proc rather
    than assumed after a sleep (a loaded CI's Ctrl-C came before the handler, the
    default action killed the command, and the test passed testing nothing)."""
    try:
        if _sigint_disposition(pid, signum) != "caught":
            return False
        if proc_syscalls.READ is None:  # pragma: no cover - another architecture: handler only
            return True
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                call = proc_syscalls.syscall(task)
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                if call[0] in proc_syscalls.READ and call[1] == "0x0" and stat[0] == "S":
                    return True
    except (OSError, KeyError):  # not started yet, or gone
        pass
    return False


def _wait_until_it_reads_stdin(
    proc: subprocess.Popen, pid: int | None = None, signum: int = signal.SIGINT
) -> None:
    """Wait (60 s at most) until ``pid`` (default: ``proc``'s) blocks reading its stdin
    with its handler of ``signum`` in; seen twice in a row, so a read that returns at
    once is not taken for it."""
    deadline, seen = time.monotonic() + 60, 0
    while seen < 2:
        assert proc.poll() is None, "it ended before it waited for input"
        assert time.monotonic() < deadline, "it never blocked reading its stdin"
        seen = seen + 1 if _blocks_reading_stdin(pid or proc.pid, signum) else 0
        time.sleep(0.05)


def _wait_for_commits(proc: subprocess.Popen, catalog: Path, at_least: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if committed_files(catalog) >= at_least:
            return
        time.sleep(0.01)
    assert proc.poll() is None, "the scan ended before it could be interrupted"
    pytest.fail("no file was committed in 90 s")


def _scan_args(tree: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["scan", str(tree), "--data-dir", str(tmp_path / "data"), "--no-match",
            "--types", "pdq,md5", "--workers", "1", "--batch-size", "8", "--no-progress",
            "--out", str(tmp_path / "report.jsonl"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("signum", "to_group", "extra"),
    [
        (signal.SIGINT, True, ()),  # Ctrl-C: the workers and the fork server get it too
        # a supervisor's SIGTERM to the scan alone; no --file-timeout: the wait for
        # workers had no poll at all, and a signal another thread took ran late
        (signal.SIGTERM, False, ("--file-timeout", "0")),
        # a closed terminal: multiprocessing's resource tracker died of it, was started
        # again, and printed a KeyError traceback per semaphore it had never seen
        (signal.SIGHUP, True, ()),
    ],
)
def test_an_interrupted_scan_says_how_far_it_got_and_a_rerun_resumes(
    tmp_path, signum, to_group, extra
):
    tree = tmp_path / "tree"
    _tree(tree)
    catalog = tmp_path / "data" / "catalog.sqlite"
    proc = _hashmatch(_scan_args(tree, tmp_path, *extra))
    _wait_for_commits(proc, catalog, 16)
    workers = psutil.Process(proc.pid).children(recursive=True)
    sent = time.monotonic()
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    stderr = err.decode()

    assert proc.returncode == -signum, stderr  # died of it: a shell shows 128 + signum
    assert took < 5, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert "resource_tracker" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == f"hashmatch: interrupted ({signum.name})"
    assert "run the same command again to resume" in stderr
    summary = json.loads(next(x for x in stderr.splitlines() if x.startswith("{")))
    assert summary["interrupted"] is True
    done = summary["hashed"] + summary["failed"]
    assert 16 <= done < N_FILES
    assert not (tmp_path / "report.jsonl").exists()  # no report that looks complete
    assert not (tmp_path / "report.jsonl.tmp").exists()
    _, alive = psutil.wait_procs(workers, timeout=5)
    for p in alive:  # pragma: no cover - only on failure: do not leak them
        p.kill()
    assert not alive, "scan workers outlived the scan"

    conn = sqlite3.connect(catalog)
    try:  # the run is recorded as stopped, with what it did; every done file committed
        finished, recorded = conn.execute("SELECT finished_at, summary FROM runs").fetchone()
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone()[0] == done
    finally:
        conn.close()
    assert finished is not None and json.loads(recorded)["interrupted"] is True

    rerun = _hashmatch(_scan_args(tree, tmp_path, *extra))
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    final = json.loads(lines[-1])
    assert final["seen"] == N_FILES and "interrupted" not in final
    assert final["skipped_unchanged"] == done  # resumed: nothing done is hashed again


def test_an_interrupted_ingest_stops_with_one_line(tmp_path):
    """Ctrl-C while ``ingest`` waits for input: click printed "Aborted!" and exited 1,
    or nothing at all: the parser thread, blocked reading stdin, was waited for until
    more input came (only a second Ctrl-C ended it)."""
    args = ["ingest", "-", "--list", "partner", "--type", "pdq", "--data-dir"]
    proc = _hashmatch([*args, str(tmp_path / "data")], stdin=subprocess.PIPE)
    rng = np.random.default_rng(3)
    proc.stdin.write(b"".join(rng.bytes(32).hex().encode() + b"\n" for _ in range(100)))
    proc.stdin.flush()  # the pipe stays open: ingest waits for more
    deadline = time.monotonic() + 60
    while not (tmp_path / "data" / "store.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _wait_until_it_reads_stdin(proc)
    _ctrl_c_while_stdin_idles(proc, "ingest")


def _ctrl_c_while_stdin_idles(proc: subprocess.Popen, what: str) -> str:
    """Ctrl-C to ``proc`` while its stdin stays open, as a terminal's or a stalled
    pipe's (its reader blocked); its stderr once it stopped as every command must."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} did not stop on Ctrl-C while its input was idle")
    finally:
        proc.stdin.close()
    stderr = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGINT, stderr  # not click's "Aborted!", exit 1
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == "hashmatch: interrupted (SIGINT)"
    return stderr


def test_a_scan_report_piped_into_head_ends_quietly(tmp_path):
    """``scan --out - | head``: the reader leaves early; the scan said "Error: Broken
    pipe" (its own error wrapping named the OSError) instead of ending quietly."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(40):  # failures: report lines without any hashing to wait for
        (tree / f"empty{i}.jpg").write_bytes(b"")
    args = ["scan", str(tree), "--data-dir", str(tmp_path / "data"), "--no-match"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, *args, "--workers", "0", "--out", "-", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `head -0`
    _, err = proc.communicate(timeout=60)
    stderr = err.decode()
    assert "Error" not in stderr and "Traceback" not in stderr, stderr
    assert proc.returncode in (1, 141), stderr


# ------------------------------------------------------------ ingest stopped part way

N_SIGNALS = 30_000


@pytest.fixture(scope="module")
def hash_list(tmp_path_factory) -> Path:
    """A partner's CSV of N_SIGNALS PDQ hashes, each with labels and an external id."""
    path = tmp_path_factory.mktemp("lists") / "partner.csv"
    rng = np.random.default_rng(11)
    rows = [f"pdq,{rng.bytes(32).hex()},csam;batch{i % 5},id{i}" for i in range(N_SIGNALS)]
    path.write_text("signal_type,signal_value,labels,external_id\n" + "\n".join(rows) + "\n")
    return path


def _stored(store: Path, list_name: str) -> list[tuple]:
    """A list's signals as an operator sees them (every column a user gave)."""
    if not store.exists():
        return []
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(
            "SELECT s.signal_type, hex(s.code), s.labels, s.external_id, s.quality,"
            " s.expires_at, s.retracted_at FROM signals s JOIN hash_lists l ON l.id = s.list_id"
            " WHERE l.name = ? ORDER BY s.signal_type, s.code",
            (list_name,),
        ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def _count(store: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:
        return 0
    try:
        return conn.execute("SELECT COUNT(*) FROM signals").fetchone()[0]
    except sqlite3.OperationalError:  # the store is being created
        return 0
    finally:
        conn.close()


def _stop_once_stored(proc: subprocess.Popen, store: Path, signum: int, at_least: int) -> str:
    """Send ``signum`` once ``store`` holds ``at_least`` signals; the CLI's stderr."""
    deadline = time.monotonic() + 120
    while _count(store) < at_least:
        assert proc.poll() is None, "the ingest ended before it could be interrupted"
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"fewer than {at_least} signals stored in 120 s")
        time.sleep(0.01)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    stderr = err.decode()
    assert proc.returncode == -signum, stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == f"hashmatch: interrupted ({signum.name})"
    assert "re-run the same command to finish: ingest is idempotent" in stderr
    return stderr


@pytest.fixture(scope="module")
def uninterrupted(hash_list, tmp_path_factory) -> list[tuple]:
    """The store an ingest of ``hash_list`` that nothing stopped leaves."""
    data_dir = tmp_path_factory.mktemp("reference") / "data"
    done = subprocess.run(
        [sys.executable, "-c", CLI, "ingest", str(hash_list), "--list", "partner",
         "--data-dir", str(data_dir)],
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    rows = _stored(data_dir / "store.sqlite", "partner")
    assert len(rows) == N_SIGNALS and all("csam" in labels for _, _, labels, *_ in rows)
    return rows


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_ingest_stopped_part_way_says_what_it_stored_and_a_rerun_completes_it(
    tmp_path, hash_list, uninterrupted, signum
):
    """Stopped mid-file, ``ingest`` printed only "interrupted (SIGTERM)": nothing said
    whether half a partner's list was in, nor whether running it again duplicates it."""
    data_dir = tmp_path / "data"
    args = ["ingest", str(hash_list), "--list", "partner", "--batch-size", "2000",
            "--data-dir", str(data_dir)]  # fmt: skip
    stderr = _stop_once_stored(_hashmatch(args), data_dir / "store.sqlite", signum, 2000)

    said = re.search(r"stopped after (\d+) committed batch\(es\): ([\d,]+) signal\(s\)", stderr)
    assert said, stderr
    batches, stored = int(said[1]), int(said[2].replace(",", ""))
    in_store = _stored(data_dir / "store.sqlite", "partner")
    assert stored == len(in_store) == 2000 * batches, stderr  # exact: what is committed
    assert 2000 <= stored < N_SIGNALS
    assert "list 'partner' is new: created by this ingest" in stderr  # its batches made it

    rerun = subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, timeout=300
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert (
        f"added {N_SIGNALS - stored}, updated 0, unchanged {stored}, rejected 0"
        in rerun.stdout.decode()
    )
    assert _stored(data_dir / "store.sqlite", "partner") == uninterrupted


def _list_count(target: str, list_name: str) -> int:
    """The list's signal count as ``remote lists`` shows it."""
    done = subprocess.run(
        [sys.executable, "-c", CLI, "remote", "--server", target, "lists"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    (row,) = [x for x in map(json.loads, done.stdout.splitlines()) if x["name"] == list_name]
    return int(row.get("signal_count", 0))


N_REMOTE = 50_000  # the stop comes at 1,000 stored, when gRPC has sent a few thousand more
#: each row's external id: a row of ~250 bytes, so the file (~12 MB) is ~3 times what gRPC's
#: flow-control window (~4 MB seen) lets the client send ahead of the server's storing.
#: Plain rows (~45 bytes: 2.2 MB) all fitted in it: on a loaded box the whole file was
#: sent before the first batch was stored, and the stop came too late to be part way
EXTERNAL_ID_CHARS = 200


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A ``hashmatch serve`` process: (its address, its store)."""
    data_dir = tmp_path_factory.mktemp("remote") / "server"
    with serve_no_auth(data_dir, "127.0.0.1:0") as seen:
        yield served_address(seen), data_dir / "store.sqlite"


def _pdq_csv(path: Path, seed: int) -> Path:
    """A CSV of N_REMOTE random PDQ hashes, each with a long external id."""
    codes = np.random.default_rng(seed).integers(0, 256, (N_REMOTE, 32), dtype=np.uint8)
    with path.open("w") as out:
        out.write("signal_type,signal_value,external_id\n")
        out.writelines(
            f"pdq,{row.tobytes().hex()},{i:0{EXTERNAL_ID_CHARS}d}\n" for i, row in enumerate(codes)
        )
    return path


def test_a_remote_ingest_stopped_part_way_says_exactly_what_the_server_stored(
    tmp_path, remote_server
):
    """Ctrl-C cancelled the stream: the client could only say how many signals it had
    sent, an upper bound (gRPC had sent thousands the server had not stored yet).
    Now the first Ctrl-C ends the stream where it is and waits for the server's reply,
    whose counts are what the store really holds; a re-run finds exactly those stored."""
    target, store = remote_server
    path = _pdq_csv(tmp_path / "partner.csv", seed=12)
    args = ["remote", "--server", target, "ingest", "partner", str(path)]
    stderr = _stop_once_stored(_hashmatch(args), store, signal.SIGINT, _count(store) + 1000)

    said = re.search(r"the server's reply: ([\d,]+) stored into 'partner' \(added (\d+),", stderr)
    assert said, stderr
    stored = int(said[1].replace(",", ""))
    assert stored == int(said[2])  # a fresh list: every stored one was added
    assert stored == len(_stored(store, "partner"))  # exact
    assert stored == _list_count(target, "partner")
    assert 1000 <= stored < N_REMOTE, stderr  # part way, not the whole file
    assert "no more signals sent; waiting up to" in stderr

    rerun = subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, timeout=600
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr.decode()
    reply = json.loads(rerun.stdout)
    assert (reply["added"], reply["unchanged"]) == (N_REMOTE - stored, stored)
    assert _list_count(target, "partner") == N_REMOTE


def test_a_remote_ingest_stopped_after_all_was_sent_says_so(tmp_path):
    """A Ctrl-C that came once the client had sent every signal (while it waited for
    the reply) ended nothing, yet the command said "stopped part way through its 300
    signal(s)" and then "300 stored". It now says the stop came after every signal was
    sent. The server's store is held by a real second process, so the one message's
    write waits (logged) and the stop comes surely after the send, before the reply."""
    from test_cli_store_lock_wait import PROMPTLY, _let_go, _lines, _store_with_a_list, _until
    from test_cli_tokens_edits import _holding
    from test_server_store_lock_wait import HOLDS, _serving

    data = _store_with_a_list(tmp_path)
    codes = np.random.default_rng(14).integers(0, 256, (300, 32), dtype=np.uint8)
    path = tmp_path / "all.csv"  # one message (--batch-size 1000)
    rows = "".join(f"pdq,{row.tobytes().hex()}\n" for row in codes)
    path.write_text("signal_type,signal_value\n" + rows)
    with _serving(data, busy=60) as (address, server_said, _):
        with _holding(data / "store.sqlite") as holder:
            args = ["remote", "--server", address, "ingest", "partner-a", str(path)]
            proc = _hashmatch(args, text=True)
            _until(server_said, HOLDS, PROMPTLY)  # the message is in: its write waits
            os.kill(proc.pid, signal.SIGINT)
            said = _lines(proc.stderr)
            before = _until(said, "no more signals sent; waiting up to", PROMPTLY)
            _let_go(holder)
            holder.wait(10)
        proc.wait(timeout=60)
    stderr = "".join(before + _rest(said))
    assert proc.returncode == -signal.SIGINT, stderr
    assert (
        f"{path}: stopped after every signal was sent (all 300); the server's reply: 300"
        " stored into 'partner-a' (added 300, updated 0, unchanged 0, rejected 0)"
    ) in stderr
    assert "part way" not in stderr


def _rest(lines) -> list[str]:
    """The lines still to come from a stream whose process ended."""
    out = []
    while (line := lines.get(timeout=10)) is not None:
        out.append(line)
    return out


def test_a_second_ctrl_c_ends_remote_ingests_wait_for_its_reply(tmp_path, remote_server):
    """The first Ctrl-C waits for the server (up to 30 s): the second must not."""
    target, store = remote_server
    path = _pdq_csv(tmp_path / "impatient.csv", seed=13)
    proc = _hashmatch(["remote", "--server", target, "ingest", "impatient", str(path)])
    at_least = _count(store) + 1000
    deadline = time.monotonic() + 120
    while _count(store) < at_least and time.monotonic() < deadline:
        assert proc.poll() is None, "the ingest ended before it could be interrupted"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)
    lines = []  # the second only once the first is handled (two at once are one signal)
    while not lines or b"no more signals sent; waiting up to" not in lines[-1]:
        lines.append(proc.stderr.readline())
        assert lines[-1], b"".join(lines).decode()  # ended before its wait began
    sent = time.monotonic()  # the server has thousands of signals in flight to store
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stderr = (b"".join(lines) + err).decode()
    assert proc.returncode == -signal.SIGINT, stderr
    assert time.monotonic() - sent < 5, stderr
    assert "hashmatch: SIGINT again: stopping now" in stderr
    assert "Traceback" not in stderr, stderr


def _run_started(catalog: Path) -> bool:
    """Whether a scan has begun its run in ``catalog`` (read-only: it is not disturbed)."""
    if not catalog.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return False


def test_ctrl_c_stops_a_scan_whose_from_list_stdin_is_idle(tmp_path):
    """``producer | hashmatch scan --from-list -`` with the producer idle: a stopped scan
    waits for nothing, but the read of the list blocked the main thread, and the signal
    handler, which only sets the scan's stop event, returned into the same read: the
    scan went on waiting for input (only a second Ctrl-C ended it)."""
    tree = tmp_path / "tree"
    _tree(tree)
    catalog = tmp_path / "data" / "catalog.sqlite"
    args = ["scan", "--from-list", "-", "--data-dir", str(tmp_path / "data"), "--no-match",
            "--types", "pdq", "--workers", "1", "--no-progress"]  # fmt: skip
    proc = _hashmatch(args, stdin=subprocess.PIPE)
    proc.stdin.write(f"{tree / 'orig0.jpg'}\n".encode())
    proc.stdin.flush()  # the pipe stays open: the scan waits for more
    deadline = time.monotonic() + 60
    while not _run_started(catalog) and time.monotonic() < deadline:
        time.sleep(0.05)
    _wait_until_it_reads_stdin(proc)
    stderr = _ctrl_c_while_stdin_idles(proc, "scan --from-list -")
    assert "run the same command again to resume" in stderr


def _ctrl_c_within_seconds(proc: subprocess.Popen, seconds: float, when: str) -> str:
    """Ctrl-C to the scan ``proc``'s group: it must die of it within ``seconds``; its
    stderr."""
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=seconds + 5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers hold stderr open too
        proc.communicate(timeout=30)
        pytest.fail(f"scan did not stop on Ctrl-C {when}")
    stderr = err.decode()
    assert proc.returncode == -signal.SIGINT, stderr
    assert time.monotonic() - sent < seconds
    return stderr


def test_ctrl_c_stops_a_scan_still_waiting_for_its_server(tmp_path):
    """``scan --server`` waits up to 60 s for the server to be SERVING. The scan's
    cooperative stop (a signal sets an event the scan checks) was already on then: a
    Ctrl-C was only noted, the wait went on to its end and failed (exit 1, not a death
    by SIGINT)."""
    import socket

    with socket.socket() as silent:  # accepts the TCP connection, never answers gRPC
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        args = ["scan", str(tmp_path), "--data-dir", str(tmp_path / "data"), "--server",
                f"127.0.0.1:{port}", "--token", "t", "--workers", "1", "--no-progress"]  # fmt: skip
        proc = _hashmatch(args)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(psutil.Error):  # connected: in the wait for SERVING
                if any(c.raddr and c.raddr.port == port
                       for c in psutil.Process(proc.pid).net_connections()):  # fmt: skip
                    break
            time.sleep(0.05)
        while _sigint_disposition(proc.pid) != "caught" and time.monotonic() < deadline:
            time.sleep(0.01)  # else the default action, not the scan, would stop it
        stderr = _ctrl_c_within_seconds(proc, 10, "while it waited for its server")
    assert stderr.rstrip().splitlines()[-1] == "hashmatch: interrupted (SIGINT)", stderr


def _sigint_disposition(pid: int, signum: int = signal.SIGINT) -> str:
    """'caught', 'ignored' or 'default': what process ``pid`` does with SIGINT (or
    ``signum``) now."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    bit = 1 << (signum - 1)
    if int(fields["SigIgn"], 16) & bit:
        return "ignored"
    return "caught" if int(fields["SigCgt"], 16) & bit else "default"


def test_ctrl_c_while_the_fork_server_starts_does_not_kill_it(tmp_path):
    """Ctrl-C reaches the fork server too, which ignores it only once its first preload
    (``scan_signals``) is imported. Its start was shielded from SIGHUP only, and the
    resource tracker's own start unblocked SIGINT before the fork server was spawned:
    a Ctrl-C once its interpreter had its SIGINT handler printed "Fatal Python error
    ... KeyboardInterrupt" and the scan ended "Aborted!", exit 1. Here the fork server
    alone gets a SIGINT in that window: it must live, and the scan finish."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i, src in enumerate((data.astronaut(), data.coffee())):
        Image.fromarray(np.ascontiguousarray(src[:128, :128])).save(tree / f"{i}.jpg")
    args = ["scan", str(tree), "--data-dir", str(tmp_path / "data"), "--no-match",
            "--types", "pdq", "--workers", "1", "--no-progress", "--out", "-"]  # fmt: skip
    proc = _hashmatch(args)
    scan = psutil.Process(proc.pid)
    sent = None
    deadline = time.monotonic() + 60
    while sent is None and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error, OSError, KeyError):
            for child in scan.children():
                if "forkserver" in " ".join(child.cmdline()):
                    state = _sigint_disposition(child.pid)
                    if state != "default":  # its Python's handler is in (or SIG_IGN)
                        child.send_signal(signal.SIGINT)
                        sent = state
        time.sleep(0.001)
    assert sent is not None, "no fork server was seen"
    _, err = proc.communicate(timeout=120)
    stderr = err.decode()
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert proc.returncode == 0, stderr


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=["nohup", "ampersand"])
def test_a_stop_signal_the_command_was_started_ignoring_stays_ignored(tmp_path, signum):
    """``nohup hashmatch ...``: SIGHUP is ignored from the start, so the command outlives
    the terminal. The CLI's stop handler replaced that: the closed terminal stopped it
    (exit 129), as if nohup had not been given. The same for SIGINT, which a
    non-interactive shell's ``hashmatch ... &`` ignores: the Ctrl-C meant for the script
    must not stop its background job (as Python itself leaves SIGINT ignored)."""
    args = ["ingest", "-", "--list", "partner", "--type", "pdq", "--data-dir"]
    proc = subprocess.Popen(
        sigint_default(
            ignoring(signum, [sys.executable, "-c", CLI, *args, str(tmp_path / "data")])
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    proc.stdin.write(f"{7:064x}\n".encode())
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not (tmp_path / "data" / "store.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # its handlers are in (SIGTERM's, never ignored here): the signal is theirs to keep
    _wait_until_it_reads_stdin(proc, signum=signal.SIGTERM)
    os.killpg(proc.pid, signum)
    _wait_until_signal_dealt_with(proc, signum)  # was a 1 s sleep: proved nothing
    still_running = proc.poll() is None
    state = _sigint_disposition(proc.pid, signum) if still_running else "ended"
    out, err = proc.communicate(timeout=60)  # closes stdin: the ingest ends on its own
    assert still_running, err.decode()
    assert state == "ignored", err.decode()  # caught: it would stop at its next chance
    assert proc.returncode == 0, err.decode()
    assert "added 1" in out.decode()


def _wait_until_signal_dealt_with(proc: subprocess.Popen, signum: int) -> None:
    """Wait (60 s at most) until ``proc`` has dealt with a ``signum`` sent to it: ended,
    or the signal no longer pending and the process blocked reading its stdin again
    (seen twice), so a handler that was to stop it has run. A fixed wait for a death
    that should not happen passed whether or not the signal had been taken yet."""
    bit = 1 << (signum - 1)
    deadline, seen = time.monotonic() + 60, 0
    while seen < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the signal was not dealt with in 60 s"
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            pending = (int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)) & bit
            ready = not pending and _blocks_reading_stdin(proc.pid, signal.SIGTERM)
        except (OSError, KeyError):  # gone: poll() says so next
            ready = False
        seen = seen + 1 if ready else 0
        time.sleep(0.05)


def _wait_until_it_pauses_to_retry(proc: subprocess.Popen) -> None:
    """Wait (60 s at most) until a thread of ``proc`` sleeps in a sleep system call: the
    client's pause between retries of a refused lookup (the scan's own threads wait on
    locks and sockets, not in sleeps). A fixed 1 s after the server's stop was short on a
    loaded box: the Ctrl-C could come while the next batch was still hashing, and the
    test passed without a lookup being retried. Where the calls are unknown, 1 s."""
    if proc_syscalls.SLEEP is None:  # pragma: no cover - another architecture
        time.sleep(1.0)
        return
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the scan ended before its lookups were retried"
        assert time.monotonic() < deadline, "no lookup of the scan was retried in 60 s"
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                if proc_syscalls.syscall(task)[0] in proc_syscalls.SLEEP:
                    return
        time.sleep(0.01)


def test_ctrl_c_stops_a_scan_whose_server_was_lost(tmp_path):
    """``scan --server`` whose server goes away: each lookup is retried until its 30 s
    deadline, and a Ctrl-C meanwhile was only noted (the scan's cooperative stop): it
    did nothing for 30 s, then the scan failed "matching failed", exit 1, its run not
    recorded as interrupted. Now the stop leaves the lookup: the batch's hashes are
    committed, the run is recorded as interrupted, dying of SIGINT."""
    from hashmatch.server.testing import running_server

    tree = tmp_path / "tree"
    _tree(tree)
    catalog = tmp_path / "data" / "catalog.sqlite"
    with running_server(tmp_path / "hub", tenants={"scanner": (["match"], True)}) as ts:
        args = _scan_args(tree, tmp_path, "--server", ts.target, "--token", ts.tokens["scanner"])
        proc = _hashmatch([a for a in args if a != "--no-match"])
        _wait_for_commits(proc, catalog, 16)
        # lost: later lookups refused and retried until their deadline (UNAVAILABLE,
        # or the CANCELLED of a lookup reaching the server as it stops)
        ts.server.stop(grace=0)
        _wait_until_it_pauses_to_retry(proc)
        stderr = _ctrl_c_within_seconds(proc, 10, "while its lookups were retried")
    assert "Traceback" not in stderr and "matching failed" not in stderr, stderr
    summary = json.loads(next(x for x in stderr.splitlines() if x.startswith("{")))
    assert summary["interrupted"] is True
    assert committed_files(catalog) == summary["hashed"] + summary["failed"] >= 16


def _ingest_in_bash(tmp_path: Path, script: str, signum: int = signal.SIGINT) -> subprocess.Popen:
    """``bash -c script`` in a session of its own (a terminal's process group), where
    ``"$@"`` is an ``ingest -`` that waits on an idle stdin; returns once it waits."""
    store = tmp_path / "data" / "store.sqlite"
    ingest = [sys.executable, "-c", CLI, "ingest", "-", "--list", "partner", "--type", "pdq",
              "--data-dir", str(tmp_path / "data")]  # fmt: skip
    proc = subprocess.Popen(
        sigint_default(["bash", "-c", script, "bash", *ingest]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    proc.stdin.write(b"ab" * 32 + b"\n")
    proc.stdin.flush()  # the pipe stays open: ingest waits for more
    deadline = time.monotonic() + 60
    while not store.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    children: list[psutil.Process] = []
    while not children and time.monotonic() < deadline:  # bash forks it: the one in python
        with contextlib.suppress(psutil.Error):
            children = [c for c in psutil.Process(proc.pid).children(recursive=True)
                        if c.cmdline()[:2] == ingest[:2]]  # fmt: skip
        time.sleep(0.01)
    assert children, "bash never started the ingest"
    _wait_until_it_reads_stdin(proc, children[0].pid, signum)  # bash's `&` ignores SIGINT
    return proc


def _communicate(proc: subprocess.Popen, what: str) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        pytest.fail(what)
    return out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ctrl_c_stops_a_bash_loop_running_hashmatch(tmp_path):
    """Ctrl-C stops a ``for`` loop over hashmatch commands. bash ends a loop on Ctrl-C
    only when the child died of SIGINT: hashmatch exited 130 instead, which bash reads
    as "the child handled it", and ran the loop on with the next item."""
    loop = 'for i in 1 2 3; do "$@"; echo "after $i"; done; echo "loop done"'
    proc = _ingest_in_bash(tmp_path, loop)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = _communicate(proc, "the loop went on after Ctrl-C (the next ingest waits)")
    assert proc.returncode == -signal.SIGINT, (out, err)
    assert out == "", out
    assert err.rstrip().splitlines()[-1] == "hashmatch: interrupted (SIGINT)", err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_script_still_sees_128_plus_the_signal(tmp_path):
    """A shell script's ``$?`` after hashmatch was stopped is 128 + the signal (143 for
    a supervisor's SIGTERM), as it was when hashmatch exited with that status."""
    script = '"$@" <&0 & child=$!; echo "$child"; wait "$child"; echo "$?"'  # <&0: not /dev/null
    proc = _ingest_in_bash(tmp_path, script, signal.SIGTERM)
    child = int(proc.stdout.readline())
    os.kill(child, signal.SIGTERM)
    out, err = _communicate(proc, "ingest did not stop on SIGTERM")
    assert out.split() == ["143"], (out, err)
    assert err.rstrip().splitlines()[-1] == "hashmatch: interrupted (SIGTERM)", err
