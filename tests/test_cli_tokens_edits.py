"""``hashmatch tokens`` as an operator meets it, run as a subprocess on real files: the
messages an edit that cannot be made, or that locks callers out, prints; what ``tokens
ls`` says of a file ``serve`` would refuse; comments kept in a ``roles`` array; and the
audit row each edit leaves in the store of the data dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sigint_default import sigint_default
from test_operator_setup import SERVE, _clean_env

from hashmatch.server import tokens_file

ADMIN, PARTNER = "a" * 64, "b" * 64


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, as_user: list[str] = ()
) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; ``as_user``: a command prefix that runs it as another
    user (``setpriv ...``)."""
    return subprocess.run(
        [*as_user, sys.executable, "-c", SERVE, *args],
        cwd=cwd, env={**_clean_env(), **(env or {})}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _file(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return text


TWO_TENANTS = f"""\
[tenants.admin]
tokens_sha256 = ["{ADMIN}"]
roles = ["match", "export", "write", "admin"]
all_lists = true

[tenants.partner]
tokens_sha256 = ["{PARTNER}"]
roles = ["match"]
"""


# -- an unwritable directory ------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is under a 0700 one)."""
    top = Path(tempfile.mkdtemp(prefix="hashmatch-tokens-"))
    top.chmod(0o755)
    yield top
    for sub in top.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(top)


def test_an_unwritable_directory_is_named_with_what_to_do_and_nothing_changes(shared_dir):
    """The edit's temp file goes beside the tokens file: in a directory the user may
    not write (a root-owned /etc/hashmatch, the file the server user's), the error was a
    bare "[Errno 13] Permission denied: '/etc/hashmatch/.auth.toml.4242.tmp'"."""
    etc = shared_dir / "etc"
    etc.mkdir()
    path = etc / "auth.toml"
    before = _file(path, TWO_TENANTS)
    as_user: list[str] = []
    if os.geteuid() == 0:  # root writes anywhere: be the server's user, who owns the file
        if shutil.which("setpriv") is None:
            pytest.skip("as root, needs setpriv (util-linux) to run the CLI as another user")
        os.chown(path, 65534, 65534)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        etc.chmod(0o555)
    out = _cli(
        "tokens", "revoke", PARTNER[:8], "--auth-file", str(path), cwd=shared_dir, as_user=as_user
    )
    assert out.returncode == 1, out.stderr
    assert f"may not create files in its directory {etc}" in out.stderr, out.stderr
    assert "run as a user who may write" in out.stderr and "not changed" in out.stderr
    assert ".tmp" not in out.stderr and "Traceback" not in out.stderr
    assert path.read_text() == before
    assert sorted(p.name for p in etc.iterdir()) == ["auth.toml"]


# -- comments in a roles array ----------------------------------------------------------

COMMENTED_ROLES = f"""\
[tenants.admin]
tokens_sha256 = ["{ADMIN}"]
roles = ["match", "export", "write", "admin"]
all_lists = true

[tenants.acme]   # the EU platform
tokens_sha256 = ["{PARTNER}"]
roles = [
  # what acme may do (ticket OPS-42)
  "match",   # since 2026-01
  "write",   # OPS-7: until their migration is done
]
all_lists = false
"""


def test_a_role_change_keeps_the_comments_of_a_roles_array(tmp_path):
    """Any role change to a tenant whose roles array held a comment was refused ("edit
    the file by hand"): the dropped role's line goes with its comment, the others and
    their comments stay, the added role gets a line of its own."""
    path = tmp_path / "auth.toml"
    before = _file(path, COMMENTED_ROLES)
    changed = _cli(
        "tokens", "set", "acme", "--drop-role", "write", "--add-role", "export",
        "--auth-file", str(path), cwd=tmp_path,
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert "'acme' now has roles match,export" in changed.stderr
    expected = before.replace(
        '  "write",   # OPS-7: until their migration is done\n', '  "export",\n'
    )
    assert path.read_text() == expected
    assert tokens_file.read_tenants(path)[1].roles == ("match", "export")


def test_a_roles_array_the_editor_cannot_keep_the_comments_of_is_refused_saying_why(tmp_path):
    path = tmp_path / "auth.toml"
    before = _file(
        path,
        COMMENTED_ROLES.replace(
            'roles = [\n  # what acme may do (ticket OPS-42)\n  "match",   # since 2026-01\n',
            'roles = ["match",   # since 2026-01\n',
        ),
    )
    refused = _cli(
        "tokens", "set", "acme", "--drop-role", "match", "--auth-file", str(path), cwd=tmp_path
    )
    assert refused.returncode == 1
    assert "cannot edit roles of tenant 'acme'" in refused.stderr, refused.stderr
    assert '"match" shares a line with the array\'s bracket or another value' in refused.stderr
    assert "with each value on a line of its own, the editor keeps them" in refused.stderr
    assert path.read_text() == before


# -- tokens ls on a file serve refuses ----------------------------------------------------


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (  # a copy-paste: partner got the admin's digest too
            lambda text: text.replace(f'["{PARTNER}"]', f'["{PARTNER}", "{ADMIN}"]'),
            "tenant 'partner' has a token digest tenant 'admin' has too",
        ),
        (lambda text: text + "\n[server]\nlisten = '0.0.0.0:50051'\n", "unknown table(s)"),
    ],
    ids=["a digest two tenants hold", "a stray table"],
)
def test_tokens_ls_warns_of_a_file_serve_would_refuse_and_exits_1(tmp_path, spoil, why):
    """`tokens ls` read each tenant alone: a file `serve` refuses as a whole listed as
    fine, exit 0, while a SIGHUP kept the old tokens (a revoked one too)."""
    path = tmp_path / "auth.toml"
    _file(path, spoil(TWO_TENANTS))
    listed = _cli("tokens", "ls", "--auth-file", str(path), cwd=tmp_path)
    assert listed.returncode == 1, listed.stderr
    assert "partner: roles match" in listed.stdout  # still listed: what is there to fix
    assert f"warning: serve refuses {path} as it is (" in listed.stderr
    assert why in listed.stderr and "a SIGHUP keeps the tokens it had" in listed.stderr
    healthy = path.with_name("healthy.toml")
    _file(healthy, TWO_TENANTS)
    fine = _cli("tokens", "ls", "--auth-file", str(healthy), cwd=tmp_path)
    assert fine.returncode == 0 and fine.stderr == "", fine.stderr


def test_the_fix_tokens_ls_names_for_a_digest_two_tenants_hold_works(tmp_path):
    """`tokens revoke PREFIX --tenant T` took the digest from every tenant in its
    expectation, so the edit was refused as "changing more than meant"; without
    --tenant the refusal said "give more digits", which no number of digits helps."""
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS.replace(f'["{PARTNER}"]', f'["{PARTNER}", "{ADMIN}"]'))
    ambiguous = _cli("tokens", "revoke", ADMIN[:8], "--auth-file", str(path), cwd=tmp_path)
    assert ambiguous.returncode == 1
    assert "tenants 'admin', 'partner' all hold the token digest" in ambiguous.stderr
    assert "give --tenant TENANT to take it from one" in ambiguous.stderr
    fixed = _cli(
        "tokens", "revoke", ADMIN[:8], "--tenant", "partner", "--auth-file", str(path),
        cwd=tmp_path,
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert _cli("tokens", "ls", "--auth-file", str(path), cwd=tmp_path).returncode == 0


def test_tokens_ls_warns_of_a_file_others_may_write_as_serve_does(tmp_path):
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS)
    path.chmod(0o666)
    listed = _cli("tokens", "ls", "--auth-file", str(path), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr  # serve starts with it: a warning only
    assert f"warning: {path} is writable by others (mode 666)" in listed.stderr


# -- --force says what it made unreachable ------------------------------------------------


def test_a_forced_revoke_of_the_last_admin_token_warns_what_no_caller_can_do_now(tmp_path):
    """`tokens revoke --force` of the last admin (and all_lists) token did as asked
    without a word: nobody learnt that no caller could call Stats any more until the
    first PERMISSION_DENIED."""
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS)
    quiet = _cli("tokens", "revoke", PARTNER[:8], "--force", "--auth-file", str(path), cwd=tmp_path)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr  # no power lost
    _file(path, TWO_TENANTS.replace(f'["{ADMIN}"]', f'["{ADMIN}", "{"c" * 64}"]'))
    forced = _cli(
        "tokens", "revoke", "--tenant", "admin", "--all", "--force", "--auth-file", str(path),
        cwd=tmp_path,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    warnings = [line for line in forced.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, forced.stderr
    admin, every_list = warnings
    assert f"no token in {path} has the admin role now" in admin
    assert "no caller can call Stats, RebuildIndex or Snapshot" in admin
    assert "`hashmatch tokens add admin` issues 'admin' a token again" in admin
    assert f"no token in {path} is of an all_lists tenant now" in every_list
    assert "no caller can see every list" in every_list


def test_a_forced_set_taking_admin_from_its_last_holder_warns_and_names_the_undo(tmp_path):
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS)
    partner = _cli("tokens", "set", "partner", "--add-role", "write", "--auth-file", str(path),
                   cwd=tmp_path)  # fmt: skip
    assert partner.returncode == 0 and "warning" not in partner.stderr, partner.stderr
    forced = _cli(
        "tokens", "set", "admin", "--drop-role", "admin", "--no-all-lists", "--force",
        "--auth-file", str(path), cwd=tmp_path,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert "warning: no token in" in forced.stderr and "has the admin role now" in forced.stderr
    assert "`hashmatch tokens set admin --add-role admin` gives it back" in forced.stderr
    assert "`hashmatch tokens set admin --all-lists` gives it back" in forced.stderr
    undo = _cli("tokens", "set", "admin", "--add-role", "admin", "--all-lists",
                "--auth-file", str(path), cwd=tmp_path)  # fmt: skip
    assert undo.returncode == 0 and "warning" not in undo.stderr, undo.stderr
    assert tokens_file.read_tenants(path)[0].all_lists


# -- the audit log ------------------------------------------------------------------------


def _audit(data: Path, cwd: Path) -> list[dict]:
    out = _cli("audit", "--json", "--data-dir", str(data), cwd=cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _store_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.glob("store.sqlite*"))


def test_token_edits_are_in_the_audit_log_of_serves_store_digest_prefixes_only(tmp_path):
    """add, set and revoke left no audit row (only serve's "reloaded tokens" log line),
    while `tenants grant` and `revoke` are audited: who got a token, whose roles changed
    and which token went are what the audit log is asked about after an incident."""
    data = tmp_path / "data"
    made = _cli("lists", "create", "partner-a", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    _file(data / "auth.toml", TWO_TENANTS)
    env = {"HASHMATCH_DATA_DIR": str(data)}  # as serve finds both: auth.toml and the store
    added = _cli("tokens", "add", "partner", "--actor", "ops:alice", cwd=tmp_path, env=env)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert f"audit: recorded in the store of {data}" in added.stderr
    roles = _cli("tokens", "set", "partner", "--add-role", "write", cwd=tmp_path, env=env)
    assert roles.returncode == 0, roles.stderr
    revoked = _cli("tokens", "revoke", PARTNER[:8], cwd=tmp_path, env=env)
    assert revoked.returncode == 0, revoked.stderr
    forced = _cli("tokens", "set", "admin", "--no-all-lists", "--force", cwd=tmp_path, env=env)
    assert forced.returncode == 0, forced.stderr

    rows = [r for r in _audit(data, tmp_path) if r["action"].startswith("token.")][::-1]
    assert [(r["action"], r["actor"], r["count"]) for r in rows] == [
        ("token.add", "ops:alice", 1),
        ("token.set", "local", 0),
        ("token.revoke", "local", 1),
        ("token.set", "local", 0),
    ]
    assert {r["source"] for r in rows} == {str(data / "auth.toml")}
    add, grant, revoke, forced_row = (r["details"] for r in rows)
    assert add == {
        "tenant": "partner", "tokens_added": [f"sha256:{digest[:12]}"], "roles": ["match"],
        "all_lists": False, "tokens_held": 2,
    }  # fmt: skip
    assert grant["roles"] == ["match", "write"] and grant["roles_before"] == ["match"]
    assert revoke["tokens_revoked"] == [f"sha256:{PARTNER[:12]}"] and revoke["tokens_held"] == 1
    assert forced_row["all_lists"] is False and forced_row["all_lists_before"] is True
    assert forced_row["no_token_left_with"] == ["all_lists"]
    # never the token, nor a whole digest
    assert token.encode() not in _store_bytes(data)
    assert digest not in json.dumps(rows) and PARTNER not in json.dumps(rows)


def test_an_edit_with_no_store_to_audit_it_is_made_and_says_so(tmp_path):
    """A tokens file kept apart from any store (or before serve made one): the edit is
    made, stderr says it is not in an audit log, and no store is created for it."""
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS)
    data = tmp_path / "no-store-here"
    out = _cli("tokens", "set", "partner", "--add-role", "export", "--auth-file", str(path),
               "--data-dir", str(data), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"audit: not recorded: no hashmatch store in {data}" in out.stderr
    assert tokens_file.read_tenants(path)[1].roles == ("match", "export")
    assert not data.exists()


def test_a_store_that_cannot_record_the_edit_leaves_it_made_with_a_warning(tmp_path):
    """The tokens file is the access control: a revocation must not fail, or wait to
    be redone, because the store is damaged; it is made, and the missing row said."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "store.sqlite").write_bytes(b"not a database, a bad copy" * 100)
    _file(data / "auth.toml", TWO_TENANTS)
    out = _cli("tokens", "revoke", PARTNER[:8], "--data-dir", str(data), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "revoked sha256:" in out.stdout
    assert "warning: the edit is made but NOT in the audit log of" in out.stderr
    assert PARTNER not in (data / "auth.toml").read_text()


def test_with_auth_file_a_config_that_does_not_load_leaves_the_edit_made_unaudited(tmp_path):
    """--auth-file never needed the config: finding the store through it must not make a
    broken HASHMATCH_CONFIG stop a revocation."""
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS)
    env = {"HASHMATCH_CONFIG": str(tmp_path / "missing.toml")}
    out = _cli("tokens", "revoke", PARTNER[:8], "--auth-file", str(path), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "audit: not recorded: serve's data dir is unknown (" in out.stderr
    assert "missing.toml" in out.stderr and "give --data-dir" in out.stderr
    assert PARTNER not in path.read_text()


def test_a_new_tenants_first_token_is_in_the_audit_log_as_token_create(tmp_path):
    """`hashmatch token TENANT` (a tenant and its first token, and on a new tokens file
    the admin token it bootstraps) left no audit row while `tokens add` did: the first
    token of a partner is the one an incident review asks about first."""
    data = tmp_path / "data"
    made = _cli("lists", "create", "partner-a", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    env = {"HASHMATCH_DATA_DIR": str(data)}  # as serve finds both: auth.toml and the store
    first = _cli("token", "acme", "--role", "match", "--role", "write", "--actor", "ops:bob",
                 cwd=tmp_path, env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip().splitlines()[-1]
    digest = hashlib.sha256(token.encode()).hexdigest()
    admin = (data / "admin.token").read_text().strip()
    admin_digest = hashlib.sha256(admin.encode()).hexdigest()
    assert f"audit: recorded in the store of {data}" in first.stderr
    again = _cli("token", "acme", "--data-dir", str(data), cwd=tmp_path)  # refused: no row
    assert again.returncode == 1 and "already exists" in again.stderr
    second = _cli("token", "ops", "--all-lists", "--data-dir", str(data), cwd=tmp_path)
    assert second.returncode == 0, second.stderr

    rows = [r for r in _audit(data, tmp_path) if r["action"].startswith("token.")][::-1]
    assert [(r["action"], r["actor"], r["count"]) for r in rows] == [
        ("token.create", "ops:bob", 1),
        ("token.create", "ops:bob", 1),
        ("token.create", "local", 1),
    ]
    assert {r["source"] for r in rows} == {str(data / "auth.toml")}
    assert [r["details"] for r in rows[:2]] == [
        {"tenant": "admin", "tokens_added": [f"sha256:{admin_digest[:12]}"],
         "roles": ["match", "export", "write", "admin"], "all_lists": True, "tokens_held": 1},
        {"tenant": "acme", "tokens_added": [f"sha256:{digest[:12]}"],
         "roles": ["match", "write"], "all_lists": False, "tokens_held": 1},
    ]  # fmt: skip
    assert rows[2]["details"]["tenant"] == "ops" and rows[2]["details"]["all_lists"] is True
    # never a token, nor a whole digest
    stored = _store_bytes(data)
    assert token.encode() not in stored and admin.encode() not in stored
    assert digest not in json.dumps(rows) and admin_digest not in json.dumps(rows)


def test_a_first_token_with_no_store_to_audit_it_is_made_and_says_so(tmp_path):
    """As for the `tokens` verbs: a tokens file kept apart from any store still gets
    its tenant, stderr says the audit row is missing, and no store is made for it."""
    path = tmp_path / "auth.toml"
    _file(path, TWO_TENANTS)
    data = tmp_path / "no-store-here"
    out = _cli("token", "acme", "--auth-file", str(path), "--data-dir", str(data), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"audit: not recorded: no hashmatch store in {data}" in out.stderr
    assert [t.name for t in tokens_file.read_tenants(path)] == ["admin", "partner", "acme"]
    assert not data.exists()


def test_token_admin_on_a_new_tokens_file_makes_the_admin_and_audits_it(tmp_path):
    """`hashmatch token admin` on a tokens file not made yet made the file with its
    first admin, then refused 'admin' as already there: exit 1, a file and admin.token
    left behind, no audit row. It now makes that admin (every role, all lists), prints
    its token and audits it; a --role that admin would not have is refused first."""
    data = tmp_path / "data"
    made = _cli("lists", "create", "partner-a", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    before = sorted(p.name for p in data.iterdir())
    refused = _cli("token", "admin", "--role", "match", "--data-dir", str(data), cwd=tmp_path)
    assert refused.returncode == 1
    said = " ".join(refused.stderr.split())
    assert f"{data / 'auth.toml'} does not exist yet" in said and "nothing written" in said
    assert "Run `hashmatch token admin` without --role" in said
    assert sorted(p.name for p in data.iterdir()) == before  # no file, no admin.token

    first = _cli("token", "admin", "--actor", "ops:carol", "--data-dir", str(data), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token == (data / "admin.token").read_text().strip()
    assert "created" in first.stderr and "with tenant 'admin'" in first.stderr
    assert f"audit: recorded in the store of {data}" in first.stderr
    [admin] = tokens_file.read_tenants(data / "auth.toml")
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert (admin.name, admin.roles, admin.all_lists, admin.digests) == (
        "admin", ("match", "export", "write", "admin"), True, (digest,)
    )  # fmt: skip
    rows = [r for r in _audit(data, tmp_path) if r["action"].startswith("token.")]
    assert [(r["action"], r["actor"], r["count"]) for r in rows] == [
        ("token.create", "ops:carol", 1)
    ]
    assert rows[0]["details"] == {
        "tenant": "admin", "tokens_added": [f"sha256:{digest[:12]}"],
        "roles": ["match", "export", "write", "admin"], "all_lists": True, "tokens_held": 1,
    }  # fmt: skip
    again = _cli("token", "admin", "--data-dir", str(data), cwd=tmp_path)  # the file exists now
    assert again.returncode == 1 and "`hashmatch tokens add admin`" in again.stderr


#: another process's write transaction on the store, held until told on stdin (or
#: killed): what a --strict ingest of a large file does to every other writer
_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE hash_lists SET name = name")
print("held", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@contextmanager
def _holding(store: Path, script: str = _HOLD_WRITE_LOCK) -> Iterator[subprocess.Popen]:
    """A process running ``script`` on ``store``, once it says it holds the write lock;
    killed and reaped on leaving, however the test ends (a holder left running keeps the
    store locked and is a zombie to the tests after). Its ``pid`` stays readable after."""
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(store)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_store_held_by_another_process_fails_the_audit_in_seconds_naming_it(tmp_path):
    """The audit row waited the store's 60 s lock timeout: with an ingest holding the
    write lock, `tokens revoke` hung a minute without a word. It now says who holds it,
    waits a few seconds, and leaves the revocation made with a warning naming it."""
    import time

    data = tmp_path / "data"
    made = _cli("lists", "create", "partner-a", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    _file(data / "auth.toml", TWO_TENANTS)
    with _holding(data / "store.sqlite") as holder:
        started = time.monotonic()
        out = _cli("tokens", "revoke", PARTNER[:8], "--data-dir", str(data), cwd=tmp_path)
        took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert took < 30, f"waited {took:.1f} s for the store's lock"
    who = f"pid {holder.pid} ("
    said = " ".join(out.stderr.split())
    assert f"audit: {who}" in said and "waiting up to 5 s to record the edit" in said
    assert f"warning: the edit is made but NOT in the audit log of {data / 'store.sqlite'}:" in said
    assert f"{who}" in said.split("warning:")[1] and "held the store's write lock" in said
    assert "Note it by hand" in said
    assert PARTNER not in (data / "auth.toml").read_text()  # the revocation stands
    assert [r for r in _audit(data, tmp_path) if r["action"].startswith("token.")] == []


def test_a_store_lock_let_go_within_the_wait_records_the_edit(tmp_path):
    """The holder lets go once the CLI says it is waiting: the row is recorded."""
    data = tmp_path / "data"
    made = _cli("lists", "create", "partner-a", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    _file(data / "auth.toml", TWO_TENANTS)
    with _holding(data / "store.sqlite") as holder:
        assert holder.stdin is not None
        cli = subprocess.Popen(
            [sys.executable, "-c", SERVE, "tokens", "revoke", PARTNER[:8], "--data-dir",
             str(data)],
            cwd=tmp_path, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert cli.stderr is not None
        said = []
        while not any("waiting up to 5 s" in line for line in said):
            line = cli.stderr.readline()
            assert line, "".join(said)
            said.append(line)
        holder.stdin.write("\n")  # let go: the CLI's wait finds the lock free
        holder.stdin.flush()
        rest = cli.communicate(timeout=60)[1]
    assert cli.returncode == 0, "".join(said) + rest
    assert f"audit: recorded in the store of {data}" in rest
    rows = [r for r in _audit(data, tmp_path) if r["action"].startswith("token.")]
    assert [r["action"] for r in rows] == ["token.revoke"]


def test_serves_first_start_admin_token_is_in_the_audit_log(tmp_path):
    """The admin token `serve` creates on its first start (no tokens file) was in no
    audit log, while every token `hashmatch token` makes is: the most powerful token had
    no token.create row. A real serve on a fresh data dir (no store yet either)."""
    import signal
    import time

    data = tmp_path / "data"
    proc = subprocess.Popen(
        sigint_default([sys.executable, "-c", SERVE, "serve", "--data-dir", str(data),
                        "--listen", "127.0.0.1:0", "--metrics-port", "-1"]),
        cwd=tmp_path, env={**_clean_env(), "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        said = ""
        deadline = time.monotonic() + 120
        while "serving on" not in said and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"serve exited early: {said}"
            said += line
        proc.send_signal(signal.SIGINT)
        said += proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, said
    assert f"audit: recorded in the store of {data}" in said
    admin = (data / "admin.token").read_text().strip()
    digest = hashlib.sha256(admin.encode()).hexdigest()
    rows = [r for r in _audit(data, tmp_path) if r["action"].startswith("token.")]
    assert [(r["action"], r["actor"], r["count"], r["source"]) for r in rows] == [
        ("token.create", "serve", 1, str(data / "auth.toml"))
    ]
    assert rows[0]["details"] == {
        "tenant": "admin", "tokens_added": [f"sha256:{digest[:12]}"],
        "roles": ["match", "export", "write", "admin"], "all_lists": True, "tokens_held": 1,
    }  # fmt: skip
    assert admin.encode() not in _store_bytes(data)
