"""A connection option of ``hashmatch remote`` given after its verb (as ``scan``,
``rescan`` and ``mirror`` take them) is refused naming where it goes, with the command
line that works; that command line reaches a real server.

Why: ``hashmatch remote health --server HOST:PORT`` said only ``No such option
'--server'``, and ``remote health --help`` lists no such option (it is the group's).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from hashmatch.server.testing import running_server

_HINT = "it is an option of `hashmatch remote`, given before the verb: hashmatch remote "


def _hashmatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hashmatch.server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_remote_options_after_the_verb_are_named_with_the_command_that_works(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}
    with running_server(tmp_path / "data", tenants={"ops": (["match", "admin"], True)}) as ts:
        token_file = tmp_path / "ops.token"
        token_file.write_text(ts.tokens["ops"] + "\n")
        address = f"127.0.0.1:{ts.server.port}"
        typed = ["remote", "stats", "--server", address, f"--token-file={token_file}"]
        refused = _hashmatch(*typed, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "No such option '--server' for `remote stats`" in refused.stderr
        suggested = refused.stderr.split(_HINT, 1)[1].strip()
        assert suggested == shlex.join(["--server", address, f"--token-file={token_file}", "stats"])
        answered = _hashmatch("remote", *shlex.split(suggested), env=env)
        assert answered.returncode == 0, answered.stderr
        assert '"total_signals": 0' in answered.stdout

        flag = _hashmatch("remote", "health", "--tls", "--wait", "1", env=env)
        assert flag.returncode == 2
        assert flag.stderr.rstrip().endswith(_HINT + "--tls health --wait 1")


def test_an_option_no_remote_command_has_is_refused_as_before():
    result = _hashmatch("remote", "health", "--bogus")
    assert result.returncode == 2
    assert "No such option '--bogus'." in result.stderr
    assert "given before the verb" not in result.stderr
