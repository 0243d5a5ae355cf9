"""``remote ingest`` says on stderr when it created its list on the server, as
``hashmatch ingest`` says it locally; an ingest into a list that exists says nothing,
and a token without the match role (it may not list the lists) ingests as before.

Why: an admin's ``remote ingest partner-a`` with a typo in the list name made a new
list without a word (the README's quick start ingests into a list no step created).
"""

from __future__ import annotations

import os
import subprocess
import sys

from hashmatch.server.testing import running_server

_HEX = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
_NEW = "list 'parnter-a' is new: created on the server by this ingest"


def _remote(address: str, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}
    env["HASHMATCH_TOKEN"] = token
    command = [sys.executable, "-m", "hashmatch.server.cli", "remote", "--server", address]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


def test_remote_ingest_says_when_it_created_the_list(tmp_path):
    hashes = tmp_path / "hashes.csv"
    hashes.write_text(f"signal_type,signal_value\npdq,{_HEX}\n")
    tenants = {"admin": (["match", "write", "admin"], True), "feeder": (["write"], True)}
    with running_server(tmp_path / "data", tenants=tenants) as ts:
        address = f"127.0.0.1:{ts.server.port}"
        first = _remote(address, ts.tokens["admin"], "ingest", "parnter-a", str(hashes))
        assert first.returncode == 0, first.stderr
        assert '"added": 1' in first.stdout
        assert _NEW in first.stderr

        again = _remote(address, ts.tokens["admin"], "ingest", "parnter-a", str(hashes))
        assert again.returncode == 0, again.stderr
        assert '"unchanged": 1' in again.stdout
        assert "is new" not in again.stderr

        # write without match: ListHashLists is refused, the ingest is not
        fed = _remote(address, ts.tokens["feeder"], "ingest", "fed", str(hashes))
        assert fed.returncode == 0, fed.stderr
        assert '"added": 1' in fed.stdout
        assert "is new" not in fed.stderr and "PERMISSION_DENIED" not in fed.stderr
