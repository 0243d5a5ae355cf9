"""Recording ``hashmatch token`` and ``tokens add|set|revoke`` in the store's audit log.

Why: who was given a token, whose roles changed and which token was revoked is exactly
what an audit log is asked about after an incident, and the only trace of these edits was
``serve``'s "reloaded tokens" log line (no tenant, no digest, gone with the log's
rotation); ``tenants grant`` and ``revoke`` were audited, the tokens were not.

Which store: the one in the data dir ``serve`` would use (``--data-dir``, else as serve
resolves it from ``--config`` / ``HASHMATCH_CONFIG`` / ``HASHMATCH_DATA_DIR``), the one
``hashmatch audit`` reads. The tokens file is the access control and is edited first: a
leaked token's revocation must never wait on, or fail with, the store. So a data dir
without a store (a tokens file kept apart, the store not made yet) or a store that
cannot be written (locked past its wait, read-only) leaves the edit made and says on
stderr that it is not in the audit log, and why. Never created here: a typo'd data dir
must not grow a second, empty store holding one audit row.

What a row holds: the tenant, the digest prefixes added or revoked (as ``tokens ls``
shows them; never a token, which the file does not hold either), the roles and
``all_lists`` after (and before, when they changed), the powers a forced edit took from
every token, and the tokens file as its source.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from hashmatch.engine.errors import HashmatchError, is_locked
from hashmatch.server.tokens_file import SHOWN_DIGITS, Change

#: how long the audit row waits for another process's write lock on the store (a
#: running ingest commits batch by batch, so a few seconds find it free between two);
#: the store's own 60 s wait made a token command hang a minute without a word
AUDIT_WAIT_SECONDS = 5.0

#: the audit log's action for each verb (``hashmatch audit --action token.revoke``);
#: ``create`` is ``hashmatch token TENANT``, a new tenant and its first token
ACTIONS = {
    "create": "token.create", "add": "token.add", "set": "token.set", "revoke": "token.revoke"
}  # fmt: skip


def audit_rows(change: Change) -> list[dict]:
    """The details of one row per tenant ``change`` touched or created, in file order."""
    added, removed = change.added, change.removed
    lost = change.lost
    was = {t.name: t for t in change.before}
    rows = []
    for after in change.after:
        before = was.get(after.name)
        if after == before:
            continue
        row: dict = {"tenant": after.name}
        given = [_shown(d) for name, d in added if name == after.name]
        taken = [_shown(d) for name, d in removed if name == after.name]
        if given:
            row["tokens_added"] = given
        if taken:
            row["tokens_revoked"] = taken
        row["roles"] = list(after.roles)
        if before is not None and after.roles != before.roles:
            row["roles_before"] = list(before.roles)
        row["all_lists"] = after.all_lists
        if before is not None and after.all_lists != before.all_lists:
            row["all_lists_before"] = before.all_lists
        row["tokens_held"] = len(dict.fromkeys(after.digests))
        if lost:
            row["no_token_left_with"] = lost
        rows.append(row)
    return rows


def first_admin_change(auth_path: Path, token: str) -> Change:
    """The edit :func:`~hashmatch.server.auth.bootstrap_admin` made: a new tokens file
    holding tenant admin (every role, all lists) with ``token``, for its token.create row
    (``serve``'s first start and ``hashmatch token`` on a new file alike)."""
    from hashmatch.server.auth import FIRST_ADMIN, ROLES, hash_token
    from hashmatch.server.tokens_file import TenantTokens

    made = TenantTokens(FIRST_ADMIN, tuple(ROLES), True, (hash_token(token),))
    return Change(auth_path, before=[], after=[made])


def _shown(digest: str) -> str:
    return f"sha256:{digest[:SHOWN_DIGITS]}"


def record_token_edit(
    change: Change,
    verb: str,
    data_dir: Path,
    actor: str,
    *,
    on_wait: Callable[[str], None] | None = None,
) -> str:
    """Append ``change`` to the audit log of the store in ``data_dir``; one line saying
    where it was recorded, or why it was not (for stderr: the edit stands either way).

    Waits up to :data:`AUDIT_WAIT_SECONDS` for another process's write lock; when one
    holds it as the write begins, ``on_wait`` is told who, before the wait."""
    action = ACTIONS[verb]
    rows = audit_rows(change)
    if not rows:
        return "audit: nothing changed, nothing recorded"
    store_path = data_dir / "store.sqlite"
    if not store_path.exists():
        return (
            f"audit: not recorded: no hashmatch store in {data_dir} (--data-dir, or"
            " HASHMATCH_DATA_DIR / --config as serve reads them, names serve's data dir)"
        )
    from hashmatch.engine.store import SignalStore
    from hashmatch.engine.store_lock_holder import describe_process, write_lock_holder

    holder = write_lock_holder(store_path)
    if holder is not None and on_wait is not None:
        on_wait(
            f"audit: {describe_process(holder)} holds the write lock of {store_path};"
            f" waiting up to {AUDIT_WAIT_SECONDS:g} s to record the edit"
        )
    try:
        store = SignalStore(store_path, create=False, busy_timeout=AUDIT_WAIT_SECONDS)
        try:
            for row in rows:
                count = len(row.get("tokens_added", ())) + len(row.get("tokens_revoked", ()))
                store.record(action, actor=actor, count=count, source=str(change.path), details=row)
        finally:
            store.close()
    except (HashmatchError, sqlite3.Error, OSError) as exc:
        if is_locked(exc) or is_locked(exc.__cause__ or exc):
            return _locked(store_path, write_lock_holder(store_path) or holder)
        return (
            f"warning: the edit is made but NOT in the audit log of {store_path} ({exc});"
            " note it by hand (`hashmatch tokens ls` shows the file as it is now)"
        )
    return f"audit: recorded in the store of {data_dir} (`hashmatch audit --action {action}`)"


def _locked(store_path: Path, holder: int | None) -> str:
    """The warning for an audit row the store's write lock kept out: who held it (when
    it can be told) and what to do."""
    from hashmatch.engine.store_lock_holder import describe_holder

    who = describe_holder(holder)
    return (
        f"warning: the edit is made but NOT in the audit log of {store_path}: {who} held"
        f" the store's write lock for over {AUDIT_WAIT_SECONDS:g} s (a --strict ingest of a"
        " large file, a stuck process?); the edit stands (it does not wait on the store)."
        " Note it by hand (`hashmatch tokens ls` shows the file as it is now), or see what"
        " that process is doing"
    )
