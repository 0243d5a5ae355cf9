"""``hashmatch tokens ls|add|set|revoke``: rotating and revoking bearer tokens.

``hashmatch token TENANT`` makes a tenant and its first token; these verbs handle the
rest of a token's life without hand-editing the tokens file or computing digests:
``add`` gives an existing tenant another token (its roles kept), ``set`` changes a
tenant's roles or ``all_lists`` without issuing a token, ``revoke`` removes one
by its digest prefix or every token of a tenant, ``ls`` shows who holds what (digest
prefixes only: the file never holds tokens). A rotation is ``add``, move the caller to
the new token, ``revoke`` the old one, SIGHUP the server.
"""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hashmatch.engine.errors import HashmatchError
from hashmatch.server.auth import ROLES, admin_token_path, hash_token

if TYPE_CHECKING:
    from hashmatch.server.tokens_file import Change

_FILE_OPTIONS = (
    click.option(
        "--auth-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Default: the tokens file `hashmatch serve` reads (as for `hashmatch token`).",
    ),
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="The server's TOML config file (default $HASHMATCH_CONFIG).",
    ),
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Serve's data dir (default: as serve resolves it, from --config or"
        " $HASHMATCH_DATA_DIR): its auth.toml, and the store whose audit log records"
        " add, set and revoke.",
    ),
)

ACTOR_OPTION = click.option("--actor", default="local", help="Who to record in the audit log.")


def _file_options(f):
    for option in reversed(_FILE_OPTIONS):
        f = option(f)
    return f


def _role_change_options(*, give: str, all_lists: str):
    """--add-role, --drop-role and --all-lists/--no-all-lists, which change a tenant's
    roles for every token of it (``tokens add`` and ``tokens set``); ``give`` and
    ``all_lists`` start their help texts."""
    options = (
        click.option(
            "--add-role",
            "add_roles",
            multiple=True,
            type=click.Choice(ROLES),
            help=f"{give} the tenant this role (all its tokens).",
        ),
        click.option(
            "--drop-role",
            "drop_roles",
            multiple=True,
            type=click.Choice(ROLES),
            help="Take this role from the tenant (all its tokens).",
        ),
        click.option(
            "--all-lists/--no-all-lists",
            default=None,
            help=f"{all_lists} the tenant sees every list (default: as it is).",
        ),
    )

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@dataclass(frozen=True)
class _Files:
    """The tokens file a verb edits, and serve's data dir (whose store's audit log
    records the edit) or why it is unknown."""

    tokens: Path
    data_dir: Path | None
    unknown: str = ""


def resolve_files(auth_file: str | None, config_file: str | None, data_dir: str | None) -> _Files:
    """The tokens file and data dir as ``serve`` would resolve them with these options
    (``hashmatch token`` and the ``tokens`` verbs alike; the file may not exist yet).

    A config that does not load is an error only when the tokens file is to be found
    through it; with --auth-file the edit goes ahead, not audited (saying why): a
    revocation must not wait for a config file's fix."""
    from hashmatch.server import config as config_mod

    try:
        config = config_mod.load(config_file, flags={"data_dir": data_dir})
    except (HashmatchError, OSError) as exc:
        if not auth_file:
            raise click.ClickException(str(exc)) from None
        return _Files(Path(auth_file), Path(data_dir) if data_dir else None, str(exc))
    return _Files(Path(auth_file) if auth_file else config.auth_path, Path(config.data_dir))


def _existing(auth_file: str | None, config_file: str | None, data_dir: str | None) -> _Files:
    """:func:`resolve_files`, for a verb that edits a tokens file there must be."""
    files = resolve_files(auth_file, config_file, data_dir)
    if not files.tokens.exists():
        raise click.ClickException(
            f"{files.tokens}: no tokens file (`hashmatch token TENANT` makes one)"
        )
    return files


def audit_edit(change: Change, verb: str, files: _Files, actor: str) -> None:
    """Record the edit in the audit log of serve's store; say on stderr where, or why not."""
    from hashmatch.server.tokens_audit import record_token_edit

    if files.data_dir is None:
        line = (
            f"audit: not recorded: serve's data dir is unknown ({files.unknown}); give --data-dir"
        )
    else:
        line = record_token_edit(
            change, verb, files.data_dir, actor, on_wait=lambda said: click.echo(said, err=True)
        )
    click.echo(line, err=True)


def short_digest(digest: str) -> str:
    """A digest as `tokens ls` shows it (``sha256:9f86d081884c``)."""
    from hashmatch.server.tokens_file import SHOWN_DIGITS

    return f"sha256:{digest[:SHOWN_DIGITS]}"


@click.group("tokens")
def tokens_group() -> None:
    """Bearer tokens in the tokens file: list, add (rotate), set (roles), revoke."""


@tokens_group.command("ls")
@_file_options
def tokens_ls(auth_file: str | None, config_file: str | None, data_dir: str | None) -> None:
    """Tenants of the tokens file with their roles and token digest prefixes. A file
    `hashmatch serve` would refuse as a whole (a digest two tenants hold, a table besides
    [tenants.*], no token at all) is listed, then said on stderr, and the exit code is 1.

    \b
    Example:
      hashmatch tokens ls
      acme: roles match,write; tokens sha256:9f86d081884c, sha256:60303ae22b99
    """
    from hashmatch.server.auth import permission_warning
    from hashmatch.server.tokens_file import read_for_listing

    files = _existing(auth_file, config_file, data_dir)
    path = files.tokens
    try:
        tenants, refused = read_for_listing(path)
    except (HashmatchError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    for t in tenants:
        every = "; all lists" if t.all_lists else ""
        held = ", ".join(short_digest(d) for d in t.digests) or "none"
        click.echo(f"{t.name}: roles {','.join(t.roles) or '-'}{every}; tokens {held}")
    count = sum(len(t.digests) for t in tenants)
    click.echo(f"{len(tenants)} tenant(s), {count} token(s) in {path}")
    unsafe = permission_warning(path)
    if unsafe:
        click.echo(f"warning: {unsafe}", err=True)
    if refused:
        click.echo(
            f"warning: serve refuses {path} as it is ({refused}): a SIGHUP keeps the tokens"
            " it had (a revoked one too) and a restart fails; fix the file (a digest two"
            " tenants hold: `hashmatch tokens revoke PREFIX --tenant TENANT` takes it from"
            " one)",
            err=True,
        )
        raise SystemExit(1)


@tokens_group.command("add")
@click.argument("tenant")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    help="The tenant's roles as they are (a check); a different set is refused.",
)
@_role_change_options(give="Also give", all_lists="Change whether")
@ACTOR_OPTION
@_file_options
def tokens_add(
    tenant: str,
    roles: tuple[str, ...],
    add_roles: tuple[str, ...],
    drop_roles: tuple[str, ...],
    all_lists: bool | None,
    actor: str,
    auth_file: str | None,
    config_file: str | None,
    data_dir: str | None,
) -> None:
    """Give an existing TENANT another token (a rotation); print the token once.

    Roles and all_lists belong to the tenant, so the new token gets the ones its
    tenant has; --add-role/--drop-role/--all-lists change them for every token of it.

    \b
    Example (rotating acme's token):
      hashmatch tokens add acme          # the new token on stdout; move acme to it
      hashmatch tokens revoke 9f86d081   # the old one's digest prefix (tokens ls)
      kill -HUP <server pid>
    """
    from hashmatch.server.tokens_file import add_token

    files = _existing(auth_file, config_file, data_dir)
    path = files.tokens
    new = secrets.token_urlsafe(32)
    digest = hash_token(new)
    try:
        change = add_token(
            path, tenant, digest, roles=roles, add_roles=add_roles, drop_roles=drop_roles,
            all_lists=all_lists,
        )  # fmt: skip
    except (HashmatchError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    before, after = change.tenant(tenant)
    click.echo(
        f"added token {short_digest(digest)} to {tenant!r} ({len(after.digests)} token(s));"
        " SIGHUP the server to load it",
        err=True,
    )
    if after.roles != before.roles or after.all_lists != before.all_lists:
        every = ", all lists" if after.all_lists else ""
        click.echo(
            f"{tenant!r} now has roles {','.join(after.roles)}{every} (every token of it)",
            err=True,
        )
    click.echo(new)  # before the audit: the file holds its digest, whatever happens next
    audit_edit(change, "add", files, actor)


@tokens_group.command("set")
@click.argument("tenant")
@_role_change_options(give="Give", all_lists="Whether")
@click.option(
    "--force",
    is_flag=True,
    help="Also take admin or all_lists from the last tenant with a token that has it.",
)
@ACTOR_OPTION
@_file_options
def tokens_set(
    tenant: str,
    add_roles: tuple[str, ...],
    drop_roles: tuple[str, ...],
    all_lists: bool | None,
    force: bool,
    actor: str,
    auth_file: str | None,
    config_file: str | None,
    data_dir: str | None,
) -> None:
    """Change an existing TENANT's roles or all_lists (every token of it), issuing no
    token; SIGHUP the server to apply it. Taking the admin role or all_lists from the
    last tenant with a token that has it is refused without --force.

    \b
    Example (a tenant made before the export role, for rescan --server / mirror):
      hashmatch tokens set acme --add-role export
      kill -HUP <server pid>
    """
    from hashmatch.server.tokens_file import set_tenant

    files = _existing(auth_file, config_file, data_dir)
    path = files.tokens
    try:
        change = set_tenant(
            path,
            tenant,
            add_roles=add_roles,
            drop_roles=drop_roles,
            all_lists=all_lists,
            force=force,
        )
    except (HashmatchError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    before, after = change.tenant(tenant)
    every = ", all lists" if after.all_lists else ""
    if after == before:
        click.echo(f"{tenant!r} has roles {','.join(after.roles)}{every} already", err=True)
        return
    click.echo(
        f"{tenant!r} now has roles {','.join(after.roles)}{every} (every token of it);"
        " SIGHUP the server to apply it",
        err=True,
    )
    audit_edit(change, "set", files, actor)
    _warn_of_lock_out(change)


@tokens_group.command("revoke")
@click.argument("prefix", required=False)
@click.option("--tenant", help="Only this tenant's tokens (required with --all).")
@click.option("--all", "every", is_flag=True, help="Every token of --tenant.")
@click.option(
    "--force",
    is_flag=True,
    help="Also remove the last token of an admin or all_lists tenant.",
)
@ACTOR_OPTION
@_file_options
def tokens_revoke(
    prefix: str | None,
    tenant: str | None,
    every: bool,
    force: bool,
    actor: str,
    auth_file: str | None,
    config_file: str | None,
    data_dir: str | None,
) -> None:
    """Remove the token whose SHA-256 digest starts with PREFIX (8+ hex digits, as
    `tokens ls` shows), or with --tenant T --all every token of T (T's roles stay,
    for a later `tokens add`). A prefix several digests share is refused, and so,
    without --force, is removing the last token of a tenant with the admin role or
    all_lists (nobody could make admin calls): `tokens add` a new one first.

    \b
    Example:
      hashmatch tokens revoke 9f86d081
      hashmatch tokens revoke --tenant acme --all
      printf %s "$LEAKED" | sha256sum   # a leaked token's digest
    Then SIGHUP the server: its open streams on a revoked token end.
    """
    from hashmatch.server.tokens_file import revoke

    if every == (prefix is not None):
        raise click.UsageError("give a digest PREFIX, or --tenant TENANT --all")
    if every and tenant is None:
        raise click.UsageError("--all needs --tenant TENANT")
    files = _existing(auth_file, config_file, data_dir)
    path = files.tokens
    try:
        change = revoke(path, prefix, tenant=tenant, every=every, force=force)
    except (HashmatchError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    removed = change.removed
    for name, digest in removed:
        click.echo(f"revoked {short_digest(digest)} of {name!r}")
    click.echo(
        f"SIGHUP the server (`kill -HUP <pid>`) to end their use; `hashmatch tokens add"
        f" {shlex.quote(removed[0][0])}` issues a new one",
        err=True,
    )
    audit_edit(change, "revoke", files, actor)
    _warn_of_lock_out(change)
    saved = _saved_admin_token(path)
    if saved is not None and hash_token(saved[1]) in {digest for _, digest in removed}:
        click.echo(
            f"note: {saved[0]} still holds the token just revoked (the admin token the"
            " first start saved there): `export HASHMATCH_TOKEN=$(cat ...)` of it now gets"
            " UNAUTHENTICATED; remove the file, or save the admin's new token in it",
            err=True,
        )


def _warn_of_lock_out(change: Change) -> None:
    """Say on stderr what a --force edit made unreachable, and how to give it back."""
    from hashmatch.server.tokens_file import lock_out_warnings

    for line in lock_out_warnings(change):
        click.echo(f"warning: {line}", err=True)


def _saved_admin_token(auth_path: Path) -> tuple[Path, str] | None:
    """(path, token) of the ``admin.token`` the first start saved beside the tokens file
    (:func:`~hashmatch.server.auth.bootstrap_admin`), if there is a readable one.

    Why: the README has operators read their token from it; once that token is revoked
    (a rotation), the file names a token no server accepts, and nothing else says so."""
    saved = admin_token_path(auth_path)
    try:
        return saved, saved.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


COMMANDS = [tokens_group]
