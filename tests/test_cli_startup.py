"""The CLI's start-up: verbs import only what they use, and lazy imports changed no verb.

Why: importing the CLI imported every verb's libraries (numba, OpenCV, PyAV, FAISS,
gRPC: ~1.8 s a command on a loaded host) whatever verb ran, for cron jobs, health
probes and the test suite's hundreds of subprocesses alike. See the README's "CLI
start-up".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_help_tree import help_tree

EXPECTED_HELP = Path(__file__).parent / "data" / "cli_help.txt"

#: the hashing stack and the index kernels: what a store verb must not pay for
HEAVY = ("numba", "cv2", "faiss", "av")

#: run in a fresh interpreter: import the CLI, then each verb in turn (in-process, as
#: the console script runs one), recording after each which watched modules are loaded
_PROBE = r"""
import json, sys
watched = set(sys.argv[1].split(","))
verbs = json.loads(sys.argv[2])

def loaded():
    return sorted({m.split(".")[0] for m in sys.modules} & watched)

from hashmatch.server.cli import cli
report = [["import", loaded(), 0]]
for args in verbs:
    try:
        cli.main(args, prog_name="hashmatch", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # click's ClickException etc.: the verb's own failure
        code = type(exc).__name__
    report.append([" ".join(args), loaded(), code])
print(json.dumps(report))
"""


def test_every_verb_help_and_options_are_unchanged():
    """Every verb's full --help, recursively, and each parameter's settings, as the
    CLI printed them before its imports were made lazy (regenerate the file after a
    deliberate change: see tests/cli_help_tree.py)."""
    assert help_tree() == EXPECTED_HELP.read_text()


def _probe(
    verbs: list[list[str]], cwd: Path, watched: tuple[str, ...] = (*HEAVY, "grpc", "google")
) -> list[tuple[str, list[str], object]]:
    env = {**os.environ, "HASHMATCH_DATA_DIR": str(cwd / "data")}
    env.pop("HASHMATCH_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(watched), json.dumps(verbs)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return [tuple(row) for row in json.loads(out.stdout.splitlines()[-1])]


def test_store_verbs_import_neither_hashing_nor_index_stack(tmp_path: Path):
    """Importing the CLI and running store verbs (lists, ingest, retract, tenants,
    tokens, audited in the store too, audit, export, backup) loads no numba, OpenCV,
    PyAV, FAISS, nor gRPC/protobuf (a backup loaded FAISS and numba for two file
    helpers)."""
    pdq = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    (tmp_path / "list.txt").write_text(f"pdq {pdq}\n")
    auth = tmp_path / "auth.toml"
    verbs = [
        ["lists", "create", "partner-a"],
        ["lists", "ls"],
        ["ingest", "list.txt", "--list", "partner-a"],
        ["retract", "--list", "partner-a", pdq, "--reason", "test"],
        ["tenants", "create", "acme"],
        ["tenants", "grant", "acme", "partner-a"],
        ["tenants", "ls"],
        ["token", "acme", "--auth-file", str(auth), "--role", "match"],
        ["tokens", "ls", "--auth-file", str(auth)],
        ["tokens", "add", "acme", "--auth-file", str(auth)],  # each audited in data/
        ["tokens", "set", "acme", "--add-role", "write", "--auth-file", str(auth)],
        ["tokens", "revoke", "--tenant", "acme", "--all", "--auth-file", str(auth)],
        ["audit"],
        ["retracted"],
        ["lists", "export", "partner-a", "--out", "partner-a.csv"],
        ["backup", str(tmp_path / "backup.sqlite")],
        ["lists", "delete", "partner-a", "--yes"],
        ["lists", "ls", "--json"],
    ]
    report = _probe(verbs, tmp_path)
    assert [code for _, _, code in report] == [0] * len(report), report
    assert all(mods == [] for _, mods, _ in report), report


def test_store_verbs_that_handle_no_codes_import_no_numpy(tmp_path: Path):
    """Importing the CLI, and the verbs that read or change lists, tenants, tokens and
    the audit log without handling a hash code, load no numpy (~110 ms: the signal-type
    registry, the store and the engine imported it at start for every verb). Run on a
    store that holds a live and a retracted signal, as an operator's does."""
    pdq = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    (tmp_path / "list.txt").write_text(f"pdq {pdq}\npdq {'0' * 63}1\n")
    auth = str(tmp_path / "auth.toml")
    setup = [
        ["lists", "create", "partner-a"],
        ["ingest", "list.txt", "--list", "partner-a"],
        ["retract", "--list", "partner-a", pdq, "--reason", "test"],
    ]
    assert [code for _, _, code in _probe(setup, tmp_path)] == [0] * 4
    verbs = [
        ["lists", "ls"],
        ["lists", "ls", "--json"],
        ["lists", "create", "partner-b"],
        ["lists", "set", "partner-b", "--description", "B"],
        ["tenants", "create", "acme"],
        ["tenants", "grant", "acme", "partner-a"],
        ["tenants", "ls"],
        ["token", "acme", "--auth-file", auth, "--role", "match"],
        ["tokens", "ls", "--auth-file", auth],
        ["audit"],
        ["retracted"],
        ["backup", str(tmp_path / "backup.sqlite")],
    ]
    report = _probe(verbs, tmp_path, watched=("numpy", *HEAVY))
    assert [code for _, _, code in report] == [0] * len(report), report
    assert all(mods == [] for _, mods, _ in report), report


def test_remote_verbs_import_grpc_but_not_the_hashing_stack(tmp_path: Path):
    """`remote health` (a probe every few seconds), `remote stats`, `lists` and `match`
    of a hex hash against a closed port: they fail as before (UNAVAILABLE), having
    loaded gRPC but no hashing stack, nor numpy (the client sends hex as it was given)."""
    closed = ["remote", "--server", "127.0.0.1:9", "--timeout", "2"]
    pdq = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    verbs = [[*closed, "health"], [*closed, "stats"], [*closed, "lists"], [*closed, "match", pdq]]
    report = _probe(verbs, tmp_path, watched=("numpy", *HEAVY, "grpc", "google"))
    (_, at_import, _), *verbs = report
    assert at_import == [], report
    for _args, mods, code in verbs:
        assert code == "ClickException", report
        assert set(mods) == {"grpc", "google"}, report


@pytest.mark.parametrize("args", [["--help"], ["lists", "ls", "--help"]])
def test_console_script_still_answers(args: list[str]):
    """The console script (signal handling first, then the CLI) runs as before."""
    hm = Path(sys.executable).with_name("hashmatch")
    out = subprocess.run([str(hm), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: hashmatch")
