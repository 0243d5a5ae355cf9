"""Rotating and revoking tokens: ``hashmatch tokens ls|add|revoke`` edit the tokens file
the way an operator would by hand (comments and other tenants kept), atomically and
under the file's lock, and a running ``serve`` applies the edit on SIGHUP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from test_operator_setup import SERVE, Served, _clean_env, _tenant, _waits_for_a_lock

from hashmatch.server import auth, tokens_file
from hashmatch.server.cli import cli
from hashmatch.server.client import HashmatchClient
from hashmatch.v1 import common_pb2, matcher_pb2

CLEAN = {"HASHMATCH_CONFIG": None, "HASHMATCH_DATA_DIR": None, "HASHMATCH_AUTH_FILE": None}


def _run(path: Path, *args: str):
    # serve's data dir, whose store would record the edit: the file's, which holds none
    # (not the ./hashmatch-data of wherever the tests run)
    env = {**CLEAN, "HASHMATCH_DATA_DIR": str(path.parent)}
    return CliRunner().invoke(cli, [*args, "--auth-file", str(path)], env=env)


def _digest_of(token: str) -> str:
    return auth.hash_token(token)


HAND_WRITTEN = """\
# hashmatch tokens (SHA-256 digests only). Kept by ops@example.org.

[tenants."admin"]
tokens_sha256 = ["{admin}"]
roles = ["match", "export", "write", "admin"]
all_lists = true

# partner-a: ticket OPS-42; rotate every 90 days
[tenants.partner-a]   # the EU platform
tokens_sha256 = [
  "{old}",  # issued 2026-09-01, expires 2026-12-01
  "{ci}",   # CI
]
roles = ["match"]

[tenants."partner b"]
tokens_sha256 = ["{other}"]   # never rotated
roles = ["match", "export"]
all_lists = false
"""


def _hand_written(path: Path, **tokens: str) -> str:
    text = HAND_WRITTEN.format(**{name: _digest_of(t) for name, t in tokens.items()})
    path.write_text(text)
    path.chmod(0o600)
    return text


def _tokens(*names: str) -> dict[str, str]:
    return {name: f"{name}-token-{'x' * 20}" for name in names}


def test_a_rotation_keeps_comments_other_tenants_roles_and_the_files_mode(tmp_path):
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    before = _hand_written(path, **tokens)
    original = path.open("rb")  # holds the original inode (a freed one may be reused)

    added = _run(path, "tokens", "add", "partner-a")
    assert added.exit_code == 0, added.output
    new = added.stdout.strip().splitlines()[-1]
    old_prefix = _digest_of(tokens["old"])[:8]
    revoked = _run(path, "tokens", "revoke", old_prefix)
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked sha256:{old_prefix}" in revoked.stdout

    after = path.read_text()
    assert _tenant(path, new).tenant == "partner-a"
    assert _tenant(path, new).roles == frozenset({"match"})  # the tenant's roles kept
    assert _tenant(path, tokens["ci"]).tenant == "partner-a"
    with pytest.raises(auth.Unauthenticated):
        _tenant(path, tokens["old"])
    # every line but the revoked token's is still there, in order; the new one added
    kept = [line for line in before.splitlines() if _digest_of(tokens["old"]) not in line]
    assert [line for line in after.splitlines() if _digest_of(new) not in line] == kept
    assert "# CI" in after and "# the EU platform" in after and "never rotated" in after
    assert path.stat().st_mode & 0o777 == 0o600
    with original:  # replaced whole (temp file + rename), the old file never rewritten
        assert os.fstat(original.fileno()).st_ino != path.stat().st_ino
        assert original.read().decode() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_tokens_ls_shows_roles_and_digest_prefixes_never_tokens(tmp_path):
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    _hand_written(path, **tokens)
    listed = _run(path, "tokens", "ls")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[1] == (
        f"partner-a: roles match; tokens sha256:{_digest_of(tokens['old'])[:12]},"
        f" sha256:{_digest_of(tokens['ci'])[:12]}"
    )
    assert lines[0].startswith("admin: roles match,export,write,admin; all lists; tokens")
    assert lines[-1] == f"3 tenant(s), 4 token(s) in {path}"
    for token in tokens.values():
        assert token not in listed.output
        assert _digest_of(token) not in listed.output  # a prefix only


def test_an_ambiguous_or_unknown_prefix_is_refused_and_nothing_changes(tmp_path):
    path = tmp_path / "auth.toml"
    shared = "abcdef01"
    path.write_text(
        "[tenants.a]\n"
        f'tokens_sha256 = ["{shared}{"1" * 56}"]\n'
        "[tenants.b]\n"
        f'tokens_sha256 = ["{shared}{"2" * 56}"]  # b\'s\n'
    )
    before = path.read_text()
    refused = _run(path, "tokens", "revoke", shared)
    assert refused.exit_code == 1
    assert "2 token digests start with abcdef01" in refused.output
    assert f"a:{shared}1111" in refused.output and "give more digits" in refused.output
    for prefix in ("0123456789", "abc", "sha256:zz"):
        assert _run(path, "tokens", "revoke", prefix).exit_code == 1
    assert path.read_text() == before
    # a longer prefix, the ls form (sha256:), or the tenant, tells them apart
    assert _run(path, "tokens", "revoke", f"sha256:{shared}2").exit_code == 0
    assert path.read_text() == f'[tenants.a]\ntokens_sha256 = ["{shared}{"1" * 56}"]\n' + (
        "[tenants.b]\ntokens_sha256 = []  # b's\n"
    )


def test_revoking_every_token_of_a_tenant_keeps_it_for_a_new_token(tmp_path):
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    _hand_written(path, **tokens)
    gone = _run(path, "tokens", "revoke", "--tenant", "partner-a", "--all")
    assert gone.exit_code == 0, gone.output
    assert gone.stdout.count("revoked sha256:") == 2
    assert "[tenants.partner-a]   # the EU platform" in path.read_text()
    again = _run(path, "tokens", "add", "partner-a")  # same roles as before
    assert again.exit_code == 0, again.output
    assert _tenant(path, again.stdout.strip().splitlines()[-1]).roles == frozenset({"match"})


def test_revoking_the_last_token_of_the_file_is_refused(tmp_path):
    """serve refuses a file without tokens on SIGHUP and keeps the old ones: the
    revocation would silently not happen."""
    path = tmp_path / "auth.toml"
    path.write_text(f'[tenants.only]\ntokens_sha256 = ["{"e" * 64}"]\n')
    refused = _run(path, "tokens", "revoke", "eeeeeeee")
    assert refused.exit_code == 1 and "without any token" in refused.output
    assert "e" * 64 in path.read_text()


def test_revoking_the_last_admin_token_is_refused_without_force(tmp_path):
    """Only an empty file was refused: revoking the one admin token (rotating it the
    wrong way round) left partners' tokens and no caller who could make admin calls."""
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    _hand_written(path, **tokens)
    before = path.read_text()
    prefix = _digest_of(tokens["admin"])[:10]
    refused = _run(path, "tokens", "revoke", prefix)
    assert refused.exit_code == 1, refused.output
    assert "without a token of a tenant with the admin role" in refused.output
    assert "or of an all_lists tenant" in refused.output  # partner b's all_lists is false
    assert "`hashmatch tokens add admin`" in refused.output and "--force" in refused.output
    assert path.read_text() == before
    # the way it is meant: a new admin token first, then the old one goes without --force
    added = _run(path, "tokens", "add", "admin")
    assert added.exit_code == 0, added.output
    assert _run(path, "tokens", "revoke", prefix).exit_code == 0
    assert _tenant(path, added.stdout.strip().splitlines()[-1]).roles == frozenset(auth.ROLES)
    # every admin token of the tenant, and --force: done as asked
    every = _run(path, "tokens", "revoke", "--tenant", "admin", "--all")
    assert every.exit_code == 1 and "--force" in every.output
    forced = _run(path, "tokens", "revoke", "--tenant", "admin", "--all", "--force")
    assert forced.exit_code == 0, forced.output
    assert not tokens_file.read_tenants(path)[0].digests


def test_revoking_the_last_all_lists_token_is_refused_without_force(tmp_path):
    path = tmp_path / "auth.toml"
    ops, partner = "a" * 64, "b" * 64
    path.write_text(
        f'[tenants.ops]\ntokens_sha256 = ["{ops}"]\nroles = ["match"]\nall_lists = true\n'
        f'[tenants.partner]\ntokens_sha256 = ["{partner}"]\nroles = ["match"]\n'
    )
    refused = _run(path, "tokens", "revoke", ops[:8])
    assert refused.exit_code == 1, refused.output
    assert "without a token of an all_lists tenant" in refused.output
    assert "admin role" not in refused.output  # nobody had it: nothing to lose
    assert _run(path, "tokens", "revoke", partner[:8]).exit_code == 0  # no power lost
    assert _run(path, "tokens", "revoke", ops[:8], "--force").exit_code == 1  # the very last


def _lock_outs_refused(path: Path, verb: str) -> list:
    """`tokens VERB admin` taking admin, then all_lists, from their only holder: each
    refused naming what would be lost, the file unchanged; the two results."""
    before = path.read_text()
    results = []
    for change, named in (
        (["--drop-role", "admin"], "of a tenant with the admin role"),
        (["--no-all-lists"], "of an all_lists tenant"),
    ):
        refused = _run(path, "tokens", verb, "admin", *change)
        assert refused.exit_code == 1, refused.output
        assert f"without a token {named}" in refused.output, refused.output
        assert path.read_text() == before
        results.append(refused)
    return results


def test_taking_admin_or_all_lists_from_the_last_holder_is_refused_without_force(tmp_path):
    """`tokens set admin --drop-role admin` (or --no-all-lists) locked every caller out
    of the admin calls as surely as revoking the last admin token did."""
    path = tmp_path / "auth.toml"
    _hand_written(path, **_tokens("admin", "old", "ci", "other"))
    for refused in _lock_outs_refused(path, "set"):
        assert "--force" in refused.output
    # once another tenant with a token has it, no refusal
    assert _run(path, "tokens", "set", "partner-a", "--add-role", "admin").exit_code == 0
    assert _run(path, "tokens", "set", "admin", "--drop-role", "admin").exit_code == 0
    forced = _run(path, "tokens", "set", "admin", "--no-all-lists", "--force")
    assert forced.exit_code == 0, forced.output
    assert not any(t.all_lists for t in tokens_file.read_tenants(path))


def test_tokens_add_cannot_take_admin_or_all_lists_from_the_last_holder(tmp_path):
    """`tokens add admin --drop-role admin` (or --no-all-lists) locked every caller out
    of the admin calls as `tokens set` without --force would have; add has no --force:
    it names `tokens set ... --force`, and the file is unchanged."""
    path = tmp_path / "auth.toml"
    _hand_written(path, **_tokens("admin", "old", "ci", "other"))
    for refused in _lock_outs_refused(path, "add"):
        assert "`tokens set TENANT ... --force`" in refused.output
    assert _run(path, "tokens", "set", "partner-a", "--add-role", "admin").exit_code == 0
    dropped = _run(path, "tokens", "add", "admin", "--drop-role", "admin")
    assert dropped.exit_code == 0, dropped.output  # another tenant holds admin now


def test_tokens_add_keeps_roles_unless_told_and_refuses_an_ambiguous_role_change(tmp_path):
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    _hand_written(path, **tokens)
    before = path.read_text()
    # roles are the tenant's: a different --role set would change the old token too
    differs = _run(path, "tokens", "add", "partner-a", "--role", "write")
    assert differs.exit_code == 1 and "--add-role" in differs.output
    both = _run(path, "tokens", "add", "partner-a", "--add-role", "write", "--drop-role", "write")
    assert both.exit_code == 1
    mixed = _run(path, "tokens", "add", "partner-a", "--role", "match", "--add-role", "write")
    assert mixed.exit_code == 1
    none_left = _run(path, "tokens", "add", "partner-a", "--drop-role", "match")
    assert none_left.exit_code == 1 and "no role left" in none_left.output
    missing = _run(path, "tokens", "add", "nobody")
    assert missing.exit_code == 1 and "hashmatch token nobody" in missing.output
    assert path.read_text() == before
    same = _run(path, "tokens", "add", "partner-a", "--role", "match")  # a script's check
    assert same.exit_code == 0, same.output
    more = _run(path, "tokens", "add", "partner b", "--add-role", "write", "--all-lists")
    assert more.exit_code == 0, more.output
    assert "now has roles match,export,write, all lists (every token of it)" in more.stderr
    held = _tenant(path, tokens["other"])  # the tenant's other token changed with it
    assert held.roles == frozenset({"match", "export", "write"}) and held.all_lists


def test_token_on_an_existing_tenant_names_tokens_add(tmp_path):
    path = tmp_path / "auth.toml"
    assert _run(path, "token", "acme").exit_code == 0
    again = _run(path, "token", "acme")
    assert again.exit_code == 1 and "hashmatch tokens add acme" in again.output


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
@pytest.mark.parametrize("waiting", [["token", "beta"], ["tokens", "add", "partner-a"]])
def test_a_writer_waiting_on_the_lock_does_not_lose_an_edit_that_replaced_the_file(
    tmp_path, waiting
):
    """An edit replaces the file (rename); a `hashmatch token` that waited on the old
    file's lock meanwhile appended to it, a file nobody reads any more: its tenant lost."""
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    _hand_written(path, **tokens)
    with tokens_file.locked(path) as held:  # this process is the editor
        run = subprocess.Popen(
            [sys.executable, "-c", SERVE, *waiting, "--auth-file", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env(),
        )  # fmt: skip
        while run.poll() is None and not _waits_for_a_lock(run.pid):
            time.sleep(0.01)
        text = held.read().decode()
        edited = tokens_file.remove_digests(text, "partner b", {_digest_of(tokens["other"])})
        tokens_file.replace_locked(path, held, edited)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    with pytest.raises(auth.Unauthenticated):  # the edit stands
        _tenant(path, tokens["other"])
    assert _tenant(path, out.strip()).tenant == waiting[-1]  # and the waiting write too


def test_a_rotation_on_a_running_server_takes_effect_on_sighup(tmp_path):
    """Over a real socket: after `tokens add` + `tokens revoke` and a SIGHUP, the new
    token works, the old one is UNAUTHENTICATED and its open MatchStream ends."""
    data = tmp_path / "data"
    path = data / "auth.toml"
    served = Served("--data-dir", str(data))
    try:
        served.wait_for("serving on")
        made = _run(path, "token", "acme")
        assert made.exit_code == 0, made.output
        old = made.stdout.strip()
        _reload(served, 1)
        query = matcher_pb2.MatchRequest(
            hashes=[common_pb2.HashValue(signal_type="pdq", hex="a1" * 32)]
        )
        gate = threading.Event()

        def requests():
            yield query
            gate.wait(30)
            yield query

        address = f"127.0.0.1:{served.port}"
        with HashmatchClient(address, token=old, retries=0) as before:
            before.wait_until_serving(60)
            stream = before.matcher.MatchStream(requests(), metadata=before.metadata, timeout=60)
            assert len(next(stream).results) == 1  # open and answering

            added = _run(path, "tokens", "add", "acme")
            assert added.exit_code == 0, added.output
            new = added.stdout.strip().splitlines()[-1]
            assert _run(path, "tokens", "revoke", _digest_of(old)[:10]).exit_code == 0
            _reload(served, 2)

            with HashmatchClient(address, token=new, retries=0) as after:
                assert len(after.matcher.Match(query, metadata=after.metadata).results) == 1
            with pytest.raises(grpc.RpcError) as err:
                before.matcher.Match(query, metadata=before.metadata)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            gate.set()
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)
            assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        served.stop()


def _reload(served: Served, count: int) -> None:
    """SIGHUP ``served`` and wait for its ``count``-th "reloaded" line."""
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while sum("reloaded" in line for line in served.lines) < count:
        assert time.monotonic() < deadline, "".join(served.lines)
        assert served.proc.poll() is None, "".join(served.lines)
        time.sleep(0.05)


def test_a_layout_the_editor_does_not_handle_is_refused_untouched(tmp_path):
    """An inline table (valid TOML the line edit does not understand) is refused naming
    the file, never half-edited; a CRLF file gets CRLF lines."""
    path = tmp_path / "auth.toml"
    path.write_text(f'[tenants]\nacme = {{ tokens_sha256 = ["{"a" * 64}"] }}\n')
    before = path.read_bytes()
    refused = _run(path, "tokens", "add", "acme")
    assert refused.exit_code == 1 and f"{path}: no [tenants.acme] table" in refused.output
    assert "edit the file by hand" in refused.output and path.read_bytes() == before
    path.write_bytes(f'[tenants.acme]\r\ntokens_sha256 = [\r\n  "{"a" * 64}",\r\n]\r\n'.encode())
    assert _run(path, "tokens", "add", "acme").exit_code == 0
    crlf = path.read_bytes()
    assert crlf.count(b"\r\n") == crlf.count(b"\n") == 5  # one line more, CRLF too


def _open_fds(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:  # closed meanwhile
            continue
    return count


def test_a_reload_waiting_on_an_edit_reads_the_edited_file(tmp_path):
    """serve's read waited for the edit's lock on the file the edit then replaced, and
    read that old file: a SIGHUP sent during `tokens revoke` kept the revoked token."""
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    _hand_written(path, **tokens)
    read: list[dict] = []
    with tokens_file.locked(path) as held:  # this process is `tokens revoke`
        reader = threading.Thread(target=lambda: read.append(auth.read_tokens_file(path)))
        reader.start()
        # the reader has opened the old file and polls its lock (a fixed 0.5 s sleep let a
        # late reader open the new file: the test passed without the race it is about)
        deadline = time.monotonic() + 30
        while _open_fds(path) < 2:  # ours (the lock) and the reader's
            assert time.monotonic() < deadline, "the reader never opened the file"
            time.sleep(0.005)
        text = held.read().decode()
        edited = tokens_file.remove_digests(text, "partner b", {_digest_of(tokens["other"])})
        tokens_file.replace_locked(path, held, edited)
    reader.join(10)
    assert read[0]["tenants"]["partner b"]["tokens_sha256"] == []


def test_tokens_set_changes_a_tenants_roles_without_issuing_a_token(tmp_path):
    """`tokens add --add-role` was the only way short of a hand edit, and it issued a
    token too; `tokens set` changes the roles alone, comments and tokens kept."""
    path = tmp_path / "auth.toml"
    tokens = _tokens("admin", "old", "ci", "other")
    before = _hand_written(path, **tokens)
    changed = _run(path, "tokens", "set", "partner-a", "--add-role", "export")
    assert changed.exit_code == 0, changed.output
    assert changed.stdout == ""  # no token printed: none was issued
    assert "'partner-a' now has roles match,export (every token of it)" in changed.stderr
    for token in ("old", "ci"):
        assert _tenant(path, tokens[token]).roles == frozenset({"match", "export"})
    after = path.read_text()
    assert [line for line in after.splitlines() if not line.startswith("roles")] == [
        line for line in before.splitlines() if not line.startswith("roles")
    ]
    assert len(tokens_file.read_tenants(path)[1].digests) == 2
    again = _run(path, "tokens", "set", "partner-a", "--add-role", "export")
    assert again.exit_code == 0 and "already" in again.stderr
    assert path.read_text() == after
    dropped = _run(path, "tokens", "set", "partner b", "--drop-role", "export", "--all-lists")
    assert dropped.exit_code == 0, dropped.output
    held = _tenant(path, tokens["other"])
    assert held.roles == frozenset({"match"}) and held.all_lists
    for refused in (
        ["tokens", "set", "partner-a"],  # nothing to change
        ["tokens", "set", "partner-a", "--drop-role", "match", "--drop-role", "export"],
        ["tokens", "set", "nobody", "--add-role", "write"],
    ):
        result = _run(path, *refused)
        assert result.exit_code == 1, (refused, result.output)
    assert _tenant(path, tokens["old"]).roles == frozenset({"match", "export"})


def test_the_missing_export_role_hint_names_tokens_set_for_the_tenant():
    with pytest.raises(auth.Forbidden) as caught:
        auth.Principal("partner b", frozenset({"match"})).require("export")
    assert "`hashmatch tokens set 'partner b' --add-role export`" in str(caught.value)


def test_a_header_ending_the_file_gets_its_first_key_on_a_line_of_its_own(tmp_path):
    """A tenant whose table is only its header, the file's last line without a line
    end: the inserted key was glued to the header (not TOML; refused as if the
    operator's file were invalid)."""
    path = tmp_path / "auth.toml"
    path.write_text(f'[tenants.b]\ntokens_sha256 = ["{"b" * 64}"]\n\n[tenants.a]')
    added = _run(path, "tokens", "add", "a")
    assert added.exit_code == 0, added.output
    assert _tenant(path, added.stdout.strip().splitlines()[-1]).tenant == "a"
    assert path.read_text().startswith(f'[tenants.b]\ntokens_sha256 = ["{"b" * 64}"]\n\n')


def test_an_edit_the_editor_misreads_is_refused_as_its_own_not_the_files(tmp_path):
    """A digest written as a TOML multi-line string is valid, but the line editor
    misreads it: refused naming the layout, not "not a SHA-256 digest" about a file
    that has none wrong."""
    path = tmp_path / "auth.toml"
    text = f'[tenants.a]\ntokens_sha256 = ["""{"a" * 64}"""]\n'
    text += f'[tenants.b]\ntokens_sha256 = ["{"b" * 64}"]\n'
    path.write_text(text)
    refused = _run(path, "tokens", "revoke", "a" * 8)
    assert refused.exit_code == 1
    assert "edit it by hand" in refused.output and "SHA-256" not in refused.output
    assert path.read_text() == text


def test_an_edit_serve_would_refuse_as_a_whole_is_refused_naming_why(tmp_path):
    """A file serve refuses (here a digest two tenants hold, a hand-editing slip) took
    a revoke as done: the SIGHUP then kept every old token, the revoked one included."""
    path = tmp_path / "auth.toml"
    leaked, shared = "1" * 64, "2" * 64
    text = (
        f'[tenants.a]\ntokens_sha256 = [\n  "{leaked}",\n  "{shared}",\n]\n'
        f'[tenants.b]\ntokens_sha256 = ["{shared}"]\n'
    )
    path.write_text(text)
    refused = _run(path, "tokens", "revoke", leaked[:8])
    assert refused.exit_code == 1
    assert "has a token digest tenant 'a' has too" in refused.output
    assert "a SIGHUP would keep its old tokens" in refused.output
    assert path.read_text() == text
    assert _run(path, "tokens", "add", "a").exit_code == 1


def test_an_edit_removes_the_temp_file_a_killed_edit_left(tmp_path):
    """kill -9 between writing the temp file and renaming it left .auth.toml.PID.tmp for
    good (a stray copy of the access-control file); the next edit removes it, and
    leaves a live process's temp file alone."""
    path = tmp_path / "auth.toml"
    _hand_written(path, **_tokens("admin", "old", "ci", "other"))
    editor = subprocess.Popen(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    )
    editor.wait()  # its pid names a process that is gone, as a killed edit's does
    stale = tmp_path / f".auth.toml.{editor.pid}.tmp"
    stale.write_text(path.read_text()[:40])
    other = tmp_path / ".other.toml.1.tmp"
    other.write_text("not ours")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        live = tmp_path / f".auth.toml.{running.pid}.tmp"
        live.write_text("another process's, still running")
        try:
            assert _run(path, "tokens", "add", "partner-a").exit_code == 0
        finally:
            running.kill()
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_a_digest_written_twice_for_a_tenant_is_revoked_by_its_prefix(tmp_path):
    """The same digest twice in one tenant (pasted twice, or once upper case) read as
    "2 token digests start with ...: give more digits", which no number of digits could
    satisfy: only --tenant T --all, taking the tenant's other tokens too, got rid of it."""
    path = tmp_path / "auth.toml"
    leaked, kept = "ab" * 32, "cd" * 32
    path.write_text(
        f'[tenants.a]\ntokens_sha256 = [\n  "{leaked}",\n  "{leaked.upper()}",\n  "{kept}",\n]\n'
    )
    revoked = _run(path, "tokens", "revoke", leaked[:8])
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout.count("revoked sha256:abababababab of 'a'") == 1
    assert tokens_file.read_tenants(path)[0].digests == (kept,)


def test_revoking_the_first_starts_admin_token_says_admin_token_still_holds_it(tmp_path):
    """The first start saves its admin token to admin.token beside the tokens file, and
    the README's `export HASHMATCH_TOKEN=$(cat hashmatch-data/admin.token)` reads it from
    there. Rotating that token (`tokens add admin`, `tokens revoke` the old) left the
    revoked one in the file without a word: the next session's calls were refused
    UNAUTHENTICATED with nothing naming why. The revoke names the file (it is left as
    it is: the operator's to remove or refill)."""
    path = tmp_path / "data" / "auth.toml"
    made = _run(path, "token", "acme")  # no tokens file yet: the admin one is made first
    assert made.exit_code == 0, made.output
    admin_file = path.parent / "admin.token"
    first = admin_file.read_text().strip()
    assert _run(path, "tokens", "add", "admin").exit_code == 0

    revoked = _run(path, "tokens", "revoke", _digest_of(first)[:10])
    assert revoked.exit_code == 0, revoked.output
    assert f"{admin_file} still holds the token just revoked" in revoked.stderr, revoked.stderr
    assert admin_file.read_text().strip() == first  # named, not removed

    other = _run(path, "tokens", "revoke", "--tenant", "acme", "--all")
    assert other.exit_code == 0, other.output
    assert "admin.token" not in other.stderr, other.stderr  # another token: nothing to say


def test_a_tokens_file_saved_with_a_byte_order_mark_is_refused_naming_it(tmp_path):
    """Some Windows editors save UTF-8 with a byte order mark, which TOML does not allow:
    `tokens ls`, every edit, `hashmatch token` and serve said only "not valid TOML:
    Invalid statement (at line 1, column 1)" of a first line that looks fine."""
    path = tmp_path / "auth.toml"
    text = f'[tenants.acme]\ntokens_sha256 = ["{_digest_of("acme-token")}"]\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    for args in (["tokens", "ls"], ["tokens", "add", "acme"], ["token", "bob"]):
        done = _run(path, *args)
        assert done.exit_code == 1, done.output
        assert "byte order mark" in done.output and str(path) in done.output, done.output
    assert path.read_bytes() == b"\xef\xbb\xbf" + text.encode()  # untouched
