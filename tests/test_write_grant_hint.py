"""A tenant that reads a list but may not write it is refused naming the grant that lets
it write (as a missing role names ``tokens set``), and that grant, run on the server's
data dir, makes the same ingest pass.

Why: ``remote ingest`` into a list shared for reading said only "tenant 'acme' may read
but not write this list"; the README's grant lines show ``[--write]`` among others.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from hashmatch.server.testing import running_server

_HEX = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def _hashmatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hashmatch.server.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_a_read_only_grant_names_the_write_grant_that_lets_the_ingest_pass(tmp_path):
    data = tmp_path / "data"
    hashes = tmp_path / "hashes.csv"
    hashes.write_text(f"signal_type,signal_value\npdq,{_HEX}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}
    env["HASHMATCH_DATA_DIR"] = str(data)
    tenants = {"admin": (["match", "write", "admin"], True), "acme": (["match", "write"], False)}
    with running_server(data, tenants=tenants) as ts:
        address = f"127.0.0.1:{ts.server.port}"
        admin = _hashmatch(
            {**env, "HASHMATCH_TOKEN": ts.tokens["admin"]},
            "remote", "--server", address, "ingest", "partner-a", str(hashes),
        )  # fmt: skip
        assert admin.returncode == 0, admin.stderr
        for step in (["tenants", "create", "acme"], ["tenants", "grant", "acme", "partner-a"]):
            done = _hashmatch(env, *step)
            assert done.returncode == 0, done.stderr

        acme = {**env, "HASHMATCH_TOKEN": ts.tokens["acme"]}
        ingest = ("remote", "--server", address, "ingest", "partner-a", str(hashes))
        refused = _hashmatch(acme, *ingest)
        assert refused.returncode == 1
        assert "PERMISSION_DENIED" in refused.stderr
        assert "tenant 'acme' may read but not write this list" in refused.stderr
        hint = re.search(r"on the server, `([^`]+)`", refused.stderr)
        assert hint is not None, refused.stderr
        assert hint.group(1) == "hashmatch tenants grant acme partner-a --write"

        granted = _hashmatch(env, *shlex.split(hint.group(1))[1:])
        assert granted.returncode == 0, granted.stderr
        passed = _hashmatch(acme, *ingest)
        assert passed.returncode == 0, passed.stderr
        assert '"unchanged": 1' in passed.stdout
