"""A store verb behind another process's write lock says who holds it, at once.

Why: a store verb that writes (ingest, retract, lists ..., mirror) behind another
process's write transaction (a --strict ingest of a large file) waited SQLite's 60 s
busy timeout without a word, then failed with "database is locked" naming nobody. The
wait stays (an ingest behind another ingest should wait); after a second's grace one
stderr line names the holder (pid and command line) and the wait, and a wait that runs
out names it in the error. The lock is held by a real second process throughout.
"""

from __future__ import annotations

import os
import pty
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_cli_tokens_edits import _cli, _holding
from test_operator_setup import SERVE, _clean_env

from hashmatch.engine.store import SignalStore

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
#: CLI start-up on a loaded 2-core host (~2-4 s) + the 1 s grace, with room to spare;
#: the old code said nothing for the whole 60 s
PROMPTLY = 20.0
WAITING = "holds the store's write lock; waiting for it (up to 60 s)"

#: the CLI with the store's busy timeout cut from 60 s to 3 s (a wait that runs out)
_SHORT_BUSY = (
    "import sys; import hashmatch.engine.store as s; s.BUSY_TIMEOUT = 3.0;"
    " from hashmatch.server.cli import cli; cli(sys.argv[1:])"
)


def _store_with_a_list(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    made = _cli("lists", "create", "partner-a", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "list.txt").write_text(f"pdq {PDQ}\n")
    return data


def _lines(stream) -> queue.Queue:
    """``stream``'s lines as they come (None at its end), read by a thread: a silent
    process must fail the test when the deadline passes, not block it for 60 s."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(lines: queue.Queue, text: str, seconds: float) -> list[str]:
    """The lines read up to and including the first holding ``text``; fails when none
    came within ``seconds``."""
    said: list[str] = []
    deadline = time.monotonic() + seconds
    while not said or text not in said[-1]:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {text!r} within {seconds:g} s: {''.join(said)!r}") from None
        assert line is not None, f"ended without {text!r}: {''.join(said)!r}"
        said.append(line)
    return said


def _let_go(holder: subprocess.Popen) -> None:
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()


def test_an_ingest_behind_a_held_lock_names_the_holder_at_once_then_finishes(tmp_path):
    data = _store_with_a_list(tmp_path)
    with _holding(data / "store.sqlite") as holder:
        started = time.monotonic()
        cli = subprocess.Popen(
            [sys.executable, "-c", SERVE, "ingest", "list.txt", "--list", "partner-a",
             "--data-dir", str(data)],
            cwd=tmp_path, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        said = _until(_lines(cli.stderr), WAITING, PROMPTLY)
        told_after = time.monotonic() - started
        assert cli.poll() is None  # still waiting, not failed
        _let_go(holder)
        out = cli.communicate(timeout=60)[0]
    line = said[-1]
    # one line: the holder's own command line (a python -c script) has its newlines escaped
    assert line.startswith(f"{data / 'store.sqlite'}: pid {holder.pid} (python"), line
    assert "-c \\nimport sqlite3" in line, line
    assert told_after < PROMPTLY
    assert cli.returncode == 0, "".join(said)
    assert "added 1," in out
    listed = _cli("lists", "ls", "--data-dir", str(data), cwd=tmp_path)
    assert "1 list(s), 1 live signal(s)" in listed.stdout


def test_a_verb_whose_wait_runs_out_names_the_holder_in_its_error(tmp_path):
    """The existing hint ("another process held the write lock for over 60 s") now
    says which process, so the operator knows what to wait for or look at."""
    data = _store_with_a_list(tmp_path)
    with _holding(data / "store.sqlite") as holder:
        out = subprocess.run(
            [sys.executable, "-c", _SHORT_BUSY, "lists", "create", "partner-b", "--data-dir",
             str(data)],
            cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 2, out.stderr  # the wait line, then the error: one each
    who = f"pid {holder.pid} (python -c \\nimport sqlite3"
    assert lines[0].startswith(f"{data / 'store.sqlite'}: {who}"), lines[0]
    assert lines[0].endswith("holds the store's write lock; waiting for it (up to 3 s)")
    assert "database is locked (" + who in lines[1], lines[1]
    assert "held the write lock for over 3 s: let it finish, or see what it is doing" in lines[1]


def test_on_a_terminal_it_is_one_line_too(tmp_path):
    """stderr a terminal (where ingest draws a progress bar): the same one line, once."""
    data = _store_with_a_list(tmp_path)
    with _holding(data / "store.sqlite") as holder:
        main, side = pty.openpty()
        try:
            cli = subprocess.Popen(
                [sys.executable, "-c", SERVE, "ingest", "list.txt", "--list", "partner-a",
                 "--data-dir", str(data)],
                cwd=tmp_path, env=_clean_env(), stdout=subprocess.PIPE, stderr=side,
            )  # fmt: skip
            os.close(side)
            seen = b""
            deadline = time.monotonic() + PROMPTLY
            while b"waiting for it" not in seen and time.monotonic() < deadline:
                if select.select([main], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    seen += os.read(main, 4096)
            assert b"waiting for it" in seen, seen
            _let_go(holder)
            cli.wait(timeout=60)
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(main)
    assert cli.returncode == 0, seen
    text = seen.decode()
    assert text.count("holds the store's write lock") == 1, text
    assert f"pid {holder.pid} (python -c \\nimport sqlite3" in text


def test_the_store_tells_who_after_the_grace_and_not_for_a_short_hold(tmp_path):
    """The library side: ``on_lock_wait`` hears the holder's pid once a write has waited
    the grace; a lock let go within it is not worth a line."""
    path = tmp_path / "store.sqlite"
    SignalStore(path).close()
    store = SignalStore(path)
    heard: list[tuple[int | None, float]] = []
    store.on_lock_wait = lambda pid, wait: heard.append((pid, wait))
    try:
        with _holding(path) as holder:
            threading.Timer(0.2, _let_go, (holder,)).start()  # well within the 1 s grace
            store.create_list("quick")
            holder.wait(timeout=30)
        assert heard == []

        with _holding(path) as holder:
            threading.Timer(2.0, _let_go, (holder,)).start()
            started = time.monotonic()
            store.create_list("slow")
            took = time.monotonic() - started
            holder.wait(timeout=30)
    finally:
        store.close()
    assert heard == [(holder.pid, 60.0)]
    assert took >= 1.5  # it waited for the lock, past the grace
