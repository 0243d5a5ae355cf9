"""``hashmatch token`` says on stderr that the server loads the new token on SIGHUP and,
for a tenant the store shares no list with, the store verbs that share one; those verbs,
run as said, make the tenant's ``remote lists`` show the list after a real SIGHUP.

Why: it printed the token and an audit line only; the newcomer's next call got
UNAUTHENTICATED, then, after a reload, an empty list (a token authenticates, what its
tenant sees is the store's).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest


def _env(data) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}
    return {**env, "HASHMATCH_DATA_DIR": str(data)}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hashmatch.server.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def served(tmp_path):
    """A real `hashmatch serve` on the data dir, with list 'partner-a' stored."""
    data = tmp_path / "data"
    env = _env(data)
    made = _cli(env, "lists", "create", "partner-a")
    assert made.returncode == 0, made.stderr
    command = [sys.executable, "-m", "hashmatch.server.cli", "serve", "--listen",
               "127.0.0.1:0", "--metrics-port", "-1", "--data-dir", str(data)]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, stderr=err, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"hashmatch serving on 127\.0\.0\.1:(\d+)", log.read_text())
            port = found and found.group(1)
            time.sleep(0.05)
        assert port, log.read_text()
        yield env, proc, f"127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(30)


def _reloaded(log, times: int) -> None:
    deadline = time.monotonic() + 30
    while log.read_text().count("reloaded ") < times:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_the_notes_of_a_new_token_lead_to_a_tenant_that_sees_its_list(served):
    env, proc, address, log = served
    made = _cli(env, "token", "acme", "--role", "match")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert "added tenant 'acme' to " in made.stderr
    assert "(roles match; token sha256:" in made.stderr
    assert "SIGHUP the server to load it" in made.stderr
    advice = re.findall(r"`(hashmatch tenants [^`]+)`", made.stderr)
    assert advice == ["hashmatch tenants create acme", "hashmatch tenants grant acme LIST"]

    for line in advice:
        step = _cli(env, *line.replace("LIST", "partner-a").split()[1:])
        assert step.returncode == 0, step.stderr
    proc.send_signal(signal.SIGHUP)
    _reloaded(log, 1)
    remote = {**env, "HASHMATCH_TOKEN": token}
    shown = _cli(remote, "remote", "--server", address, "lists")
    assert shown.returncode == 0, shown.stderr
    assert '"name": "partner-a"' in shown.stdout

    # a tenant the store already shares a list with, or an all-lists one: no advice
    for tenant, extra in (("acme-2", ()), ("ops", ("--all-lists",))):
        if not extra:
            for step in (("tenants", "create", tenant), ("tenants", "grant", tenant, "partner-a")):
                assert _cli(env, *step).returncode == 0
        again = _cli(env, "token", tenant, *extra)
        assert again.returncode == 0, again.stderr
        assert "SIGHUP the server to load it" in again.stderr
        assert "sees no hash list yet" not in again.stderr
