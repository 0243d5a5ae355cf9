"""Editing the tokens file in place: another token for a tenant, revoking tokens.

Why line-level edits and not "parse, change, dump": the file is the operator's. Its
comments (who holds which token, when it expires), its order and every other tenant's
entry must come through a rotation unchanged; a TOML writer would drop the comments.
Each edit touches only the value it changes (one array element, one ``roles`` or
``all_lists`` value), and the result is parsed again and compared with what was meant
before anything is written: a layout this editor does not understand (an inline table,
dotted keys) is refused, naming the file, never half-edited.

Concurrency: every writer (``hashmatch token`` appending, these edits) holds an
exclusive ``flock`` on the file while it reads and writes; ``serve`` reads under a
shared one. An edit replaces the file (temp file + rename, so a crash leaves the old
file or the new, never half of one), and a lock is on an inode: a writer that waited
on the replaced file would append to a file nobody reads any more, so :func:`locked`
re-opens until the file it locked is the one the path names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hashmatch.engine.errors import InvalidInput
from hashmatch.server.auth import TokenAuth, parse_tenant, read_tokens_file
from hashmatch.server.config import toml_from_bytes

#: digits `hashmatch tokens ls` shows of a digest, and the fewest `revoke` accepts
SHOWN_DIGITS = 12
MIN_PREFIX = 8


@dataclass(frozen=True)
class TenantTokens:
    """One ``[tenants.NAME]`` entry as the server reads it (digests, never tokens)."""

    name: str
    roles: tuple[str, ...]
    all_lists: bool
    digests: tuple[str, ...]


def read_tenants(path: str | Path) -> list[TenantTokens]:
    """The tenants of the tokens file at ``path``, in file order, strictly parsed."""
    return _tenants_of(read_tokens_file(path), path)


def _tenants_of(data: dict, path: str | Path) -> list[TenantTokens]:
    out = []
    for name, entry in (data.get("tenants") or {}).items():
        try:
            principal, digests = parse_tenant(name, entry)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc}") from None
        roles = tuple(r for r in entry.get("roles", ["match"]))
        out.append(TenantTokens(name, roles, principal.all_lists, tuple(digests)))
    return out


# -- locking and replacing ----------------------------------------------------------


@contextmanager
def locked(path: Path, mode: str = "r+b") -> Iterator[IO]:
    """``path`` opened with ``mode`` under an exclusive ``flock`` held until the block
    ends; re-opened when another writer replaced the file while this one waited."""
    while True:
        fh = open(path, mode)  # noqa: SIM115 (closed below or by the caller's block)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when fh closes
            held, named = os.fstat(fh.fileno()), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                yield fh
                return
        finally:
            fh.close()


def replace_locked(path: Path, held: IO, text: str) -> None:
    """Write ``text`` over the file ``held`` (open and locked by :func:`locked`):
    a temp file beside it with the same mode and owner, fsync-ed, renamed over it.

    Why the owner: ``sudo hashmatch tokens revoke`` as root must not leave a file the
    server's user cannot read (its next reload would keep the revoked token); a user
    who cannot give the file its owner back is refused before anything is written.
    """
    real = Path(os.path.realpath(path))  # a symlinked auth.toml stays a symlink
    st = os.fstat(held.fileno())
    tmp = real.with_name(f".{real.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise _unwritable_directory(path, real.parent, exc) from None
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(out.fileno(), st.st_uid, st.st_gid)
                except PermissionError:
                    raise InvalidInput(
                        f"{path}: owned by uid {st.st_uid} gid {st.st_gid}; the edited"
                        " file would be yours: run as its owner (or root)"
                    ) from None
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, real)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(real.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _unwritable_directory(path: Path, directory: Path, exc: OSError) -> InvalidInput:
    """Why an edit could not create its temp file, naming the directory, not the temp
    file: ``[Errno 13] Permission denied: '/etc/hashmatch/.auth.toml.4242.tmp'`` named a
    file that never existed, and nothing said that the directory was the problem."""
    if isinstance(exc, PermissionError):
        try:
            owner = f"owned by uid {directory.stat().st_uid}, "
        except OSError:
            owner = ""
        why = (
            f"you (uid {os.geteuid()}) may not create files in its directory {directory}"
            f" ({owner}mode {_mode(directory)})"
        )
        fix = f"run as a user who may write {directory} (its owner, or root)"
    elif exc.errno == errno.EROFS:
        why = f"its directory {directory} is on a read-only filesystem"
        fix = "edit the file where it is written from (a config management source?)"
    else:
        why = f"cannot create a file in its directory {directory} ({exc.strerror or exc})"
        fix = "fix that and re-run"
    return InvalidInput(
        f"{path}: not changed: {why}, and an edit writes the new file beside the old one"
        f" and renames it over it (so a crash never leaves half a file); {fix}"
    )


def _mode(path: Path) -> str:
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):o}"
    except OSError:
        return "unknown"


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files (``.auth.toml.PID.tmp``) an edit killed mid-write left
    beside the tokens file, those whose process is gone; the ones removed.

    Why: ``kill -9`` (or a power cut) between writing the temp file and renaming it
    leaves it for good: a stray copy of the access-control file, each edit's pid another
    name. Called under the file's lock, which every editor holds while its temp file
    exists; a live pid's file (another user's ``hashmatch token`` bootstrapping, whose
    temp names have the same shape) is left alone.
    """
    real = Path(os.path.realpath(path))
    removed = []
    for tmp in real.parent.glob(f".{glob.escape(real.name)}.*.tmp"):
        pid = tmp.name[len(real.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError, PermissionError):  # an unwritable dir:
            tmp.unlink()  # the edit's own temp file says so, naming the directory
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


Tenants = list[TenantTokens]


@dataclass(frozen=True)
class Change:
    """An edit of the tokens file: every tenant as it was and as it is now.

    Why whole files: what an edit took from every caller (:func:`lock_out`) and what
    the audit log records are read off the two, the same way for every verb.
    """

    path: Path
    before: Tenants
    after: Tenants

    def tenant(self, name: str) -> tuple[TenantTokens, TenantTokens]:
        """``name`` as it was and as it is."""
        return find(self.before, name, self.path), find(self.after, name, self.path)

    @property
    def removed(self) -> list[tuple[str, str]]:
        """(tenant, digest) pairs the edit took out, in file order."""
        return _pairs(self.before, self.after)

    @property
    def added(self) -> list[tuple[str, str]]:
        """(tenant, digest) pairs the edit put in, in file order."""
        return _pairs(self.after, self.before)

    @property
    def lost(self) -> list[str]:
        """What some token could do before and none can now (see :func:`lock_out`)."""
        return lock_out(self.before, self.after)


def _pairs(tenants: Tenants, less: Tenants) -> list[tuple[str, str]]:
    kept = {(t.name, d) for t in less for d in t.digests}
    held = ((t.name, d) for t in tenants for d in t.digests)
    return list(dict.fromkeys(pair for pair in held if pair not in kept))


def edit(
    path: Path, change: Callable[[str, Tenants], str], expect: Callable[[Tenants], Tenants]
) -> Change:
    """Apply ``change(text, tenants) -> new text`` to the tokens file under its lock;
    write it only when it parses (strictly) to ``expect(tenants)``."""
    with locked(path) as fh:
        remove_stale_temps(path)
        raw = fh.read()
        before = _tenants_of(toml_from_bytes(raw, path), path)
        text = raw.decode("utf-8")
        try:
            new = change(text, before)
        except InvalidInput as exc:
            if exc.field != "tokens_file":  # the others name what was asked, not the file
                raise
            raise InvalidInput(f"{path}: {exc.message}") from None
        try:
            data = toml_from_bytes(new.encode("utf-8"), path)
            after = _tenants_of(data, path)
        except InvalidInput:  # the edit's fault, not the file's: say so, not its error
            after = None
        else:
            _serve_would_load(data, path)
        if after != expect(before):  # a layout the line edit misread: touch nothing
            raise InvalidInput(
                f"{path}: could not edit it without changing more than meant (its layout):"
                " edit it by hand",
                field="tokens_file",
            )
        replace_locked(path, fh, new)
    return Change(path, before, after)


def _serve_would_load(data: dict, path: Path) -> None:
    """Refuse an edit whose result ``serve`` would refuse as a whole (a digest two
    tenants hold, a table besides [tenants]): its SIGHUP would keep every old token,
    the one just revoked included, and nothing would say so where the operator looks."""
    try:
        TokenAuth.from_mapping(data)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{path}: serve refuses this file ({exc}), so a SIGHUP would keep its old"
            " tokens (a revoked one too) and a restart would fail: fix that by hand first",
            field="tokens_file",
        ) from None


def serve_refusal(data: dict) -> str | None:
    """Why ``serve`` would refuse these tokens-file tables as a whole (at start-up, and on
    SIGHUP keeping the old tokens), or None. Why: ``tokens ls`` read each tenant alone,
    so a digest two tenants hold or a stray table listed as fine while the server kept
    its old tokens, a revoked one among them."""
    try:
        auth = TokenAuth.from_mapping(data)
    except InvalidInput as exc:
        return str(exc)
    return None if len(auth) else "it holds no tokens"


def read_for_listing(path: str | Path) -> tuple[Tenants, str | None]:
    """The tenants of the tokens file and why ``serve`` would refuse it (or None), from
    one read of it."""
    data = read_tokens_file(path)
    return _tenants_of(data, path), serve_refusal(data)


def find(tenants: Tenants, name: str, path: str | Path) -> TenantTokens:
    for tenant in tenants:
        if tenant.name == name:
            return tenant
    raise InvalidInput(
        f"no tenant {name!r} in {path} (`hashmatch token {name}` creates one)", field="tenant"
    )


def _replaced(tenants: Tenants, new: TenantTokens) -> Tenants:
    return [new if t.name == new.name else t for t in tenants]


def resolve_roles(
    current: TenantTokens, roles: tuple[str, ...], add: tuple[str, ...], drop: tuple[str, ...]
) -> tuple[str, ...]:
    """The tenant's roles after ``tokens add``: kept unless said otherwise, unambiguously.

    Why ``--role`` must repeat the current roles: roles are the tenant's, shared by all
    its tokens, so a different set would also change the old token's (the one being
    rotated out, still in use), and whether it meant "add" or "replace" is a guess
    (`tenants grant --write` once downgraded silently for the same reason).
    """
    if roles and (add or drop):
        raise InvalidInput("give --role, or --add-role/--drop-role, not both", field="role")
    if roles:
        if set(roles) != set(current.roles):
            raise InvalidInput(
                f"tenant {current.name!r} has roles {','.join(current.roles)}; --role"
                f" {','.join(roles)} differs, and roles are the tenant's (its other tokens"
                " would change too): say --add-role ROLE or --drop-role ROLE",
                field="role",
            )
        return current.roles
    both = sorted(set(add) & set(drop))
    if both:
        raise InvalidInput(f"--add-role and --drop-role both name {both}", field="role")
    result = tuple(r for r in current.roles if r not in drop)
    result += tuple(r for r in dict.fromkeys(add) if r not in result)
    if not result:
        raise InvalidInput(f"tenant {current.name!r} would have no role left", field="role")
    return result


def add_token(
    path: Path,
    tenant: str,
    digest: str,
    *,
    roles: tuple[str, ...] = (),
    add_roles: tuple[str, ...] = (),
    drop_roles: tuple[str, ...] = (),
    all_lists: bool | None = None,
) -> Change:
    """Another token (``digest``) for an existing tenant.
    A role change that would leave no token with the admin role or ``all_lists`` is
    refused (:func:`lock_out`): ``tokens add admin --drop-role admin`` locked callers
    out as a last-admin revoke did; ``tokens set --force`` is the way to mean it."""

    def meant(before: Tenants) -> Tenants:
        current = find(before, tenant, path)
        new_roles = resolve_roles(current, roles, add_roles, drop_roles)
        keep_all = current.all_lists if all_lists is None else all_lists
        return _replaced(
            before, TenantTokens(tenant, new_roles, keep_all, (*current.digests, digest))
        )

    def change(text: str, before: Tenants) -> str:
        current = find(before, tenant, path)
        after = meant(before)
        new = find(after, tenant, path)
        lost = lock_out(before, after)
        if lost:  # no --force here: taking a power away is `tokens set`'s job
            grant = " ".join(_GRANTS[power] for power in lost)
            first = f"`hashmatch tokens set OTHER {grant}`"
            raise _lock_out_refused(
                path, lost, first, field="role", forced="`tokens set TENANT ... --force`"
            )
        if new.roles != current.roles:
            text = set_roles(text, tenant, list(new.roles), current.roles)
        if new.all_lists != current.all_lists:
            text = set_all_lists(text, tenant, new.all_lists)
        return add_digest(text, tenant, digest)

    return edit(path, change, meant)


def set_tenant(
    path: Path,
    tenant: str,
    *,
    add_roles: tuple[str, ...] = (),
    drop_roles: tuple[str, ...] = (),
    all_lists: bool | None = None,
    force: bool = False,
) -> Change:
    """Change an existing tenant's roles or ``all_lists`` without issuing a token.
    Unless ``force``, refused when no token would be left
    with the admin role or ``all_lists`` (see :func:`lock_out`).

    Why: a tenant that lacks a role (an older build's tokens lack ``export``) needed
    either a hand edit of the file or ``tokens add --add-role``, which also issues a
    token nobody asked for (one more secret to store or revoke).
    """
    if not (add_roles or drop_roles or all_lists is not None):
        raise InvalidInput(
            "nothing to change: give --add-role, --drop-role, --all-lists or --no-all-lists",
            field="role",
        )

    def meant(before: Tenants) -> Tenants:
        current = find(before, tenant, path)
        new_roles = resolve_roles(current, (), add_roles, drop_roles)
        keep_all = current.all_lists if all_lists is None else all_lists
        return _replaced(before, TenantTokens(tenant, new_roles, keep_all, current.digests))

    def change(text: str, before: Tenants) -> str:
        current = find(before, tenant, path)
        after = meant(before)
        new = find(after, tenant, path)
        lost = lock_out(before, after)
        if lost and not force:
            grant = " ".join(_GRANTS[power] for power in lost)
            first = f"`hashmatch tokens set OTHER {grant}`"
            raise _lock_out_refused(path, lost, first, field="role")
        if new.roles != current.roles:
            text = set_roles(text, tenant, list(new.roles), current.roles)
        if new.all_lists != current.all_lists:
            text = set_all_lists(text, tenant, new.all_lists)
        return text

    return edit(path, change, meant)


def digest_prefix(text: str) -> str:
    """A digest prefix as typed: ``sha256:`` (as `tokens ls` shows it) and case ignored."""
    prefix = text.strip().lower().removeprefix("sha256:")
    if len(prefix) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix):
        raise InvalidInput(
            f"not a digest prefix of at least {MIN_PREFIX} hex digits: {text!r}"
            " (`hashmatch tokens ls` shows them)",
            field="prefix",
        )
    return prefix


def revoke(
    path: Path,
    prefix: str | None,
    *,
    tenant: str | None = None,
    every: bool = False,
    force: bool = False,
) -> Change:
    """Remove the one token whose digest starts with ``prefix`` (of ``tenant``, if
    given), or ``every`` token of ``tenant`` (:attr:`Change.removed` lists them).

    Refused: a prefix no digest or several digests start with (never a guess), an
    edit that would leave the file without any token (``serve`` refuses such a file on
    SIGHUP and keeps the old tokens: the revocation would silently not happen), and,
    unless ``force``, one that would remove the last token of a tenant with the admin
    role or with ``all_lists`` (see :func:`lock_out`).
    """
    wanted = digest_prefix(prefix) if prefix is not None else None

    def pick(before: Tenants) -> list[tuple[str, str]]:
        scope = [find(before, tenant, path)] if tenant is not None else before
        found = list(  # a digest written twice for a tenant is one token, not two
            dict.fromkeys(
                (t.name, d)
                for t in scope
                for d in t.digests
                if wanted is None or d.startswith(wanted)
            )
        )
        where = f" of tenant {tenant!r}" if tenant is not None else ""
        if not found:
            what = f"starts with {wanted}" if wanted else "is held"
            raise InvalidInput(f"no token digest{where} {what} in {path}", field="prefix")
        if wanted is not None and len(found) > 1 and not every:
            if len({d for _, d in found}) == 1:  # one digest two tenants hold (serve refuses)
                holders = ", ".join(repr(name) for name, _ in found)
                raise InvalidInput(
                    f"tenants {holders} all hold the token digest {found[0][1][:SHOWN_DIGITS]}"
                    " (serve refuses such a file): give --tenant TENANT to take it from one",
                    field="prefix",
                )
            listed = ", ".join(f"{name}:{d[:SHOWN_DIGITS]}" for name, d in found)
            raise InvalidInput(
                f"{len(found)} token digests{where} start with {wanted} ({listed}):"
                " give more digits",
                field="prefix",
            )
        gone = set(found)  # (tenant, digest): a digest two tenants hold goes from one
        if not any((t.name, d) not in gone for t in before for d in t.digests):
            raise InvalidInput(
                f"that would leave {path} without any token: serve refuses such a file"
                " (a SIGHUP would keep every old token); add the new token first",
                field="prefix",
            )
        lost = lock_out(before, _without(before, gone))
        if lost and not force:
            keeper = next(t.name for t in before if _powers(t) & set(lost))
            first = f"`hashmatch tokens add {shlex.quote(keeper)}`"
            raise _lock_out_refused(path, lost, first, field="prefix")
        return found

    def meant(before: Tenants) -> Tenants:
        return _without(before, set(pick(before)))

    def change(text: str, before: Tenants) -> str:
        doomed = pick(before)
        for name in dict.fromkeys(name for name, _ in doomed):
            text = remove_digests(text, name, {d for n, d in doomed if n == name})
        return text

    return edit(path, change, meant)


#: What some tenants' tokens can do that a revocation must not take from every caller
#: unasked, and how :func:`lock_out` names it.
_POWERS = {
    "admin": "of a tenant with the admin role (Stats, RebuildIndex, Snapshot)",
    "all_lists": "of an all_lists tenant (the operator's view of every list)",
}

#: The `tokens set` option that gives a tenant each of them.
_GRANTS = {"admin": "--add-role admin", "all_lists": "--all-lists"}


def _powers(tenant: TenantTokens) -> set[str]:
    return {"admin"} & set(tenant.roles) | ({"all_lists"} if tenant.all_lists else set())


def lock_out(before: Tenants, after: Tenants) -> list[str]:
    """What some token could do ``before`` and none can ``after`` (keys of
    :data:`_POWERS`). Why: removing the last admin token (rotating it the wrong way
    round, a typo'd prefix, or ``tokens set --drop-role admin``) locked every caller
    out of the admin calls until someone edited the file on the server; only an
    empty file was refused."""

    def held(tenants: Tenants, power: str) -> bool:
        return any(t.digests for t in tenants if power in _powers(t))

    return [power for power in _POWERS if held(before, power) and not held(after, power)]


#: What no caller can do once the last token with each power is gone.
_UNREACHABLE = {
    "admin": ("has the admin role", "call Stats, RebuildIndex or Snapshot (the admin role's)"),
    "all_lists": (
        "is of an all_lists tenant",
        "see every list (the operator's view: a list shared with no tenant is out of every"
        " caller's reach)",
    ),
}


def lock_out_warnings(change: Change) -> list[str]:
    """One line per power the (forced) ``change`` took from every token: what no caller
    can do once the server reloads the file, and the command that gives it back.

    Why: ``--force`` did as asked without a word; the operator learnt that nobody
    could call Stats any more from the first PERMISSION_DENIED, maybe weeks later.
    """
    lines = []
    for power in change.lost:
        had = [t for t in change.before if power in _powers(t)]
        kept = next((t.name for t in change.after if power in _powers(t)), None)
        if kept is not None:  # its tokens were revoked, its role stays
            fix = f"`hashmatch tokens add {shlex.quote(kept)}` issues {kept!r} a token again"
        else:  # taken by `tokens set`: give it back to the tenant it was taken from
            name = shlex.quote(had[0].name) if had else "TENANT"
            fix = f"`hashmatch tokens set {name} {_GRANTS[power]}` gives it back"
        held, calls = _UNREACHABLE[power]
        lines.append(
            f"no token in {change.path} {held} now: once the server reloads it (SIGHUP,"
            f" restart), no caller can {calls}; {fix}"
        )
    return lines


def _lock_out_refused(
    path: Path, lost: list[str], first: str, field: str, forced: str = "give --force"
) -> InvalidInput:
    named = " or ".join(_POWERS[power] for power in lost)
    return InvalidInput(
        f"that would leave {path} without a token {named}: after the SIGHUP, no caller"
        f" could make those calls; {first} first, or {forced}",
        field=field,
    )


def _without(tenants: Tenants, gone: set[tuple[str, str]]) -> Tenants:
    """``tenants`` with the (tenant, digest) pairs ``gone`` removed (the tenants kept).

    Why pairs: with bare digests, revoking from one tenant a digest another held too (a
    file serve refuses; `tokens revoke PREFIX --tenant T` is its fix) was expected to
    take it from both, and the edit was refused as changing more than meant."""
    return [
        TenantTokens(
            t.name, t.roles, t.all_lists, tuple(d for d in t.digests if (t.name, d) not in gone)
        )
        for t in tenants
    ]


# -- the edits ----------------------------------------------------------------------


def add_digest(text: str, tenant: str, digest: str) -> str:
    """``digest`` appended to ``tenant``'s ``tokens_sha256`` (the key made if absent)."""
    return _append_item(text, tenant, "tokens_sha256", digest)


def remove_digests(text: str, tenant: str, digests: set[str]) -> str:
    """``digests`` taken out of ``tenant``'s ``tokens_sha256``: a line holding only
    one of them (and its comment: the comment was about that token) goes whole."""
    return _remove_items(text, tenant, "tokens_sha256", digests)


def set_roles(text: str, tenant: str, roles: list[str], current: tuple[str, ...] = ()) -> str:
    """``tenant``'s roles made ``roles`` (its roles were ``current``).

    An array holding comments (``"write",  # OPS-7, until 2027``) is edited in place,
    as ``tokens_sha256`` is: a dropped role's line goes with its comment, an added role
    gets a line of its own after the others. Why: rewriting it as one ``[...]`` would
    drop the comments, so any role change to such a tenant was refused ("edit the file
    by hand") although the change itself was plain.
    """
    value = _table(text, tenant).values.get("roles")
    if value is None or "#" not in text[value.start : value.end]:
        return _set_value(text, tenant, "roles", "[" + ", ".join(map(json.dumps, roles)) + "]")
    dropped = {role for role in current if role not in roles}
    if dropped:
        text = _remove_items(text, tenant, "roles", dropped)
    for role in roles:
        if role not in current:
            text = _append_item(text, tenant, "roles", role)
    return text


def set_all_lists(text: str, tenant: str, all_lists: bool) -> str:
    return _set_value(text, tenant, "all_lists", "true" if all_lists else "false")


def _append_item(text: str, tenant: str, key: str, item: str) -> str:
    """``item`` appended to the array ``key`` of ``tenant`` (the key made if absent)."""
    table = _table(text, tenant)
    value = table.values.get(key)
    if value is None:
        return _insert_key(text, table, f"{key} = [{json.dumps(item)}]")
    array = _array(text, value)
    close = value.end - 1  # the ']'
    if not array.items:
        if array.comments:  # `[ # none yet` + `]`: the new item's place is a guess
            raise _unsupported(
                tenant, key, "it holds comments and no value to put the new one after"
            )
        return text[: value.start] + f"[{json.dumps(item)}]" + text[value.end :]
    line_start = text.rfind("\n", 0, close) + 1
    if text[line_start:close].strip() == "":  # ']' on its own line: a line before it
        last = array.items[-1]
        indent = re.match(r"[ \t]*", text[text.rfind("\n", 0, last.start) + 1 :]).group()
        comma = "" if last.comma else ","
        text = text[: last.end] + comma + text[last.end :]
        line_start += len(comma)
        return (
            text[:line_start] + f"{indent}{json.dumps(item)},{line_end(text)}" + text[line_start:]
        )
    before = text[value.start : close].rstrip()
    sep = " " if before.endswith(",") else ", "
    return text[:close].rstrip() + f"{sep}{json.dumps(item)}" + text[close:].lstrip(" \t")


def _remove_items(text: str, tenant: str, key: str, values: set[str]) -> str:
    """``values`` taken out of ``tenant``'s array ``key``: a line holding only one of
    them (and its comment: the comment was about that value) goes whole."""
    table = _table(text, tenant)
    value = table.values[key]
    array = _array(text, value)
    doomed = [item for item in array.items if item.value.strip().lower() in values]
    kept = [item for item in array.items if item not in doomed]
    cuts: list[tuple[int, int]] = []
    for item in doomed:
        start = text.rfind("\n", 0, item.start) + 1
        end = text.find("\n", item.end)
        end = len(text) if end < 0 else end
        rest = text[item.end : end]
        alone = text[start : item.start].strip() == "" and re.fullmatch(r"\s*,?\s*(#.*)?", rest)
        if not alone or start <= value.start or end >= value.end:  # shares a line
            if array.comments:
                raise _unsupported(
                    tenant,
                    key,
                    f"{json.dumps(item.value)} shares a line with the array's bracket or"
                    " another value, and rewriting the array would drop its comments"
                    " (with each value on a line of its own, the editor keeps them)",
                )
            items = ", ".join(json.dumps(item.value) for item in kept)
            return text[: value.start] + f"[{items}]" + text[value.end :]
        cuts.append((start, end + 1))
    for start, end in sorted(cuts, reverse=True):
        text = text[:start] + text[end:]
    return text


def _set_value(text: str, tenant: str, key: str, new: str) -> str:
    table = _table(text, tenant)
    value = table.values.get(key)
    if value is None:
        return _insert_key(text, table, f"{key} = {new}")
    if value.end - value.start and "#" in text[value.start : value.end]:
        raise _unsupported(tenant, key, "a comment inside the value would be lost")
    return text[: value.start] + new + text[value.end :]


def _insert_key(text: str, table: _Table, line: str) -> str:
    """``line`` as the table's first key; after a header that ends the file without a
    line end, one is added first (``[tenants.a]roles = ...`` is not TOML)."""
    head = text[: table.body]
    if not head.endswith("\n"):
        head += line_end(text)
    return head + line + line_end(text) + text[table.body :]


def line_end(text: str) -> str:
    """The file's line end: a line added to a file saved with CRLF ends the same way."""
    return "\r\n" if "\r\n" in text else "\n"


def _unsupported(tenant: str, key: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"cannot edit {key} of tenant {tenant!r} without losing its comments or layout"
        f" ({why}): edit the file by hand",
        field="tokens_file",
    )


# -- reading the layout -------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_KEY = rf"(?:{_BARE}|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')"
_HEADER = re.compile(rf"[ \t]*\[[ \t]*tenants[ \t]*\.[ \t]*(?P<key>{_KEY})[ \t]*\][ \t]*(?:#.*)?")
_KEY_LINE = re.compile(rf"[ \t]*(?P<key>{_KEY})[ \t]*=[ \t]*")


@dataclass(frozen=True)
class _Span:
    start: int
    end: int


@dataclass
class _Table:
    name: str
    body: int  # offset of the line after the header
    values: dict[str, _Span]


@dataclass(frozen=True)
class _Item:
    start: int
    end: int
    value: str
    comma: bool  # a ',' follows it


@dataclass(frozen=True)
class _Array:
    items: list[_Item]
    comments: bool


def _key_name(key: str) -> str:
    if key.startswith("'"):
        return key[1:-1]
    if key.startswith('"'):
        return json.loads(key) if "\\" not in key else _toml_string(key)
    return key


def _toml_string(quoted: str) -> str:
    import tomllib

    return tomllib.loads(f"k = {quoted}")["k"]


def _table(text: str, tenant: str) -> _Table:
    """``[tenants.<tenant>]``'s header and the values of its keys."""
    found: _Table | None = None
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end].rstrip("\r")  # a file saved with CRLF line ends
        if found is not None and re.match(r"[ \t]*\[", line):
            return found  # the next table
        header = _HEADER.fullmatch(line)
        key = _KEY_LINE.match(line)
        if header and _key_name(header["key"]) == tenant:
            found = _Table(tenant, min(end + 1, len(text)), {})
        elif key and not line.lstrip().startswith("#"):
            start = pos + key.end()
            stop = _value_end(text, start)
            if found is not None:
                found.values[_key_name(key["key"])] = _Span(start, stop)
            end = text.find("\n", stop)
            end = len(text) if end < 0 else end
        pos = end + 1
    if found is None:
        raise InvalidInput(
            f"no [tenants.{tenant}] table for tenant {tenant!r} (an inline or dotted"
            " entry? edit the file by hand)",
            field="tokens_file",
        )
    return found


def _value_end(text: str, start: int) -> int:
    """Where the value beginning at ``start`` ends: its closing ']' for an array, else
    the end of the line less a comment and trailing blanks."""
    if text.startswith("[", start):
        return _scan_array(text, start)[0]
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    line = text[start:end]
    if not line.startswith(('"', "'")):
        line = line.split("#", 1)[0]
    return start + len(line.rstrip())


def _array(text: str, value: _Span) -> _Array:
    return _scan_array(text, value.start)[1]


def _scan_array(text: str, start: int) -> tuple[int, _Array]:
    """A one-level array of strings from its '[' at ``start``: (end after ']', items)."""
    items: list[_Item] = []
    comments = False
    i = start + 1
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "#":
            comments = True
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
        elif c == ",":
            if items:
                items[-1] = _Item(items[-1].start, items[-1].end, items[-1].value, True)
            i += 1
        elif c == "]":
            return i + 1, _Array(items, comments)
        elif c in "\"'":
            end = _string_end(text, i)
            raw = text[i:end]
            value = raw[1:-1] if c == "'" else _toml_string(raw)
            items.append(_Item(i, end, value, False))
            i = end
        else:  # a nested array, a number...: not a tokens file this editor writes
            raise InvalidInput("an array of strings was expected", field="tokens_file")
    raise InvalidInput("an array is not closed", field="tokens_file")


def _string_end(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while i < len(text) and text[i] != "\n":
        if text[i] == "\\" and quote == '"':
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise InvalidInput("a string is not closed", field="tokens_file")
