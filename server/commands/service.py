"""CLI verbs for the gRPC service: ``hashmatch serve``, ``hashmatch token``, ``hashmatch remote``.

Every ``remote`` verb is one :class:`hashmatch.server.client.HashmatchClient` call
and prints JSON (one object per line), so scripts can consume it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hashmatch.engine.errors import HashmatchError, InvalidInput
from hashmatch.server.auth import admin_token_path
from hashmatch.server.commands.remote_verb import RemoteGroup
from hashmatch.server.commands.tokens import ACTOR_OPTION

if TYPE_CHECKING:  # gRPC and protobuf: imported by the verbs that call a server
    import grpc
    from google.protobuf.message import Message

DEFAULT_SERVER = "127.0.0.1:50051"
#: The server's log (hashmatch.server.app's): serve's reload outcomes go where its other
#: operational messages go, under the configured log_level.
log = logging.getLogger("hashmatch.server")


class ProtoInt(click.ParamType):
    """An integer option bounded by its proto field's range.

    Why: protobuf raises a bare ValueError ("Value out of range: -1") naming no option,
    which the CLI showed as a traceback; click names the option and exits 2. The bounds
    are the wire's, not advice (the server checks the meaningful ones, e.g. a PDQ
    threshold 0..63), so ``--help`` does not print them as an ``IntRange`` would
    ("[-2147483648<=x<=2147483647]").
    """

    name = "integer"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = click.INT.convert(value, param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} is not in the range {self.low}..{self.high}.", param, ctx)
        return number


INT32 = ProtoInt(-(2**31), 2**31 - 1)
UINT32 = ProtoInt(0, 2**32 - 1)
INT64 = ProtoInt(-(2**63), 2**63 - 1)


@functools.cache
def _int64_types() -> frozenset[int]:
    """The 64-bit integer field types (protobuf imported when a reply is printed)."""
    from google.protobuf.descriptor import FieldDescriptor

    return frozenset(
        {
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_FIXED64,
            FieldDescriptor.TYPE_SFIXED64,
        }
    )


def message_json(message: Message) -> dict[str, Any]:
    """A reply as the JSON object the CLI prints: proto field names, every field
    (zero counts included, so ``jq .rejected`` never reads null), 64-bit integers as
    numbers.

    Why not plain ``MessageToDict``: proto3 JSON writes 64-bit integers as strings
    (for JavaScript) and drops zero values, so shell users got ``"added": "2"`` and no
    ``rejected`` key at all when nothing was rejected.
    """
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints_as_numbers(message.DESCRIPTOR, data)


def _ints_as_numbers(descriptor, data: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        repeated = isinstance(value, list)
        items = value if repeated else [value]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            items = [_ints_as_numbers(field.message_type, item) for item in items]
        elif field.type in _int64_types():
            items = [int(item) for item in items]
        data[field.name] = items if repeated else items[0]
    return data


def _emit(message: Message) -> None:
    click.echo(json.dumps(message_json(message), sort_keys=True))


# -- serve ------------------------------------------------------------------------------


@click.command("serve")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--listen", help="host:port (default 127.0.0.1:50051).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Store + snapshots directory.")
@click.option("--auth-file", type=click.Path(dir_okay=False), help="Tokens file (TOML).")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=None,
    help="Accept every call without a token (local testing only).",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="CA for client certificates: turns on mutual TLS.",
)
@click.option(
    "--reflection/--no-reflection",
    default=None,
    help="gRPC server reflection, for grpcurl and generic clients (default on).",
)
@click.option("--metrics-port", type=int, help="Prometheus port (-1 = off).")
@click.option("--shards", type=int, help="Index shards per type (default 1; 0 = per core).")
@click.option("--index-kind", help="auto (default: picked per type), flat, mih or exact.")
@click.option("--workers", type=int, help="gRPC worker threads.")
@click.option("--media-workers", type=int, help="Threads hashing media.")
@click.option(
    "--max-video-frames",
    type=int,
    help="Sampled frames hashed per video sent to the server (default 10000); more is refused.",
)
@click.option("--drain-seconds", type=float, help="Grace period for in-flight calls on stop.")
def serve(config_file: str | None, **flags: Any) -> None:
    """Run the gRPC matching service until SIGINT/SIGTERM (then drain and stop).

    \b
    Example:
      hashmatch serve --data-dir ./hashmatch-data
    On first start without a tokens file, an admin token is created, saved to
    DATA_DIR/admin.token (0600), printed once when stderr is a terminal, and recorded
    in the audit log (token.create, actor serve) once the store is open.
    SIGHUP reloads the tokens file and the TLS files (a renewed certificate).
    """
    # SIGHUP reloads the tokens file once the server runs; before that (its default
    # action) it killed the starting server without a word
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from hashmatch.server import auth as auth_mod
    from hashmatch.server import config as config_mod
    from hashmatch.server import exit_guard, sdnotify
    from hashmatch.server.app import HashmatchServer
    from hashmatch.server.first_start import FirstStartFiles

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        config = config_mod.load(config_file, flags=flags)
    except (HashmatchError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    logging.getLogger().setLevel(config.log_level.upper())
    first_admin: str | None = None  # made now: audited once the store is open
    first_start = FirstStartFiles(config.auth_path)  # undone if the port does not open
    if config.insecure_no_auth:
        auth = None  # the server's start-up warns, once (app.exposure_warnings)
    else:
        try:
            first_admin = auth_mod.bootstrap_admin(config.auth_path)
        except OSError as exc:
            raise click.ClickException(
                f"{config.auth_path}: cannot create the tokens file: {exc}"
            ) from None
        first_start.made(first_admin)
        try:
            auth = _load_tokens(config.auth_path)
        except HashmatchError as exc:
            raise click.ClickException(str(exc)) from None
        _warn_if_writable(config.auth_path)
    server = HashmatchServer(config, auth=auth)
    done = threading.Event()
    # "serving" only once the index is loaded (health SERVING): a store that fails to
    # load must not be announced as served first
    announced = False

    stopped_by: list[int] = []  # the signal that began the drain

    def on_signal(signum, _frame) -> None:
        stopped_by.append(signum)  # logged by the main loop: a handler that writes to
        done.set()  # stderr mid-write fails "reentrant call"; a SIGHUP here sees the drain
        sdnotify.notify("STOPPING=1", f"STATUS=draining (up to {config.drain_seconds}s)")

    def on_hup(_signum, _frame) -> None:
        if auth is None and not config.tls_cert:
            return  # nothing to reload
        # a READY=1 during the load would tell systemd it has finished; during the drain
        # (after STOPPING=1), that the service is ready again
        tell_systemd = announced and not done.is_set()
        if tell_systemd:
            sdnotify.reloading()
        if auth is not None:
            _reload_tokens(server, config.auth_path)
        if config.tls_cert:
            _reload_certificates(server)
        if tell_systemd:
            sdnotify.notify("READY=1")

    # before the port opens: a signal between it and these lines was ignored (SIGHUP:
    # a reload not done) or ended serve without a drain (SIGTERM)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    started = time.monotonic()
    try:
        server.start()
    except BaseException as exc:  # a first start leaves nothing behind (FirstStartFiles)
        first_start.undo()
        if isinstance(exc, OSError):
            raise click.ClickException(str(exc)) from exc
        raise
    if first_admin:  # said once the port is open: a failed start's token is gone
        _say_first_admin(config.auth_path, first_admin)
    sdnotify.notify(f"STATUS=loading the index from {config.data_dir}")
    while not done.wait(0.5 if announced else 0.05):
        if server.host.load_error is not None:  # permanent: exit, so a supervisor sees it
            if first_admin:  # the store may be there all the same
                _audit_first_admin(config, first_admin)
            sdnotify.notify(f"STATUS=the index failed to load: {server.host.load_error}")
            server.stop(grace=0)
            raise click.ClickException(
                f"the index failed to load from {config.data_dir}: {server.host.load_error}"
            )
        if not announced and server.wait_ready(0):
            announced = True
            if first_admin:  # the store exists now (a first start creates it in the load)
                token, first_admin = first_admin, None
                server.host.run_background(
                    "audit-first-admin", functools.partial(_audit_first_admin, config, token)
                )
            address = _bound_address(config.listen, server.port)
            serving = f"hashmatch serving on {address} (data {config.data_dir}"
            log.info(
                "%s%s; index loaded in %.1f s)",
                serving,
                f", metrics :{server.metrics_port}/metrics" if server.metrics_port else "",
                time.monotonic() - started,
            )
            sdnotify.notify("READY=1", f"STATUS={serving})")
    log.info("signal %s: draining (up to %ss)", stopped_by[0], config.drain_seconds)
    exit_guard.exit_within(config.drain_seconds)  # nothing stuck keeps the process
    server.stop()
    if first_admin:  # stopped before the index loaded: the store may be there all the same
        _audit_first_admin(config, first_admin)


def _say_first_admin(auth_path: Path, token: str) -> None:
    """Where the first start's admin token is; the token itself on a terminal only."""
    saved = admin_token_path(auth_path)
    if sys.stderr.isatty():
        click.echo(
            f"created {auth_path} with an admin token (shown once; also saved"
            f" to {saved}, mode 0600):\n  export HASHMATCH_TOKEN={token}",
            err=True,
        )
    else:  # journald, docker logs, a log shipper: a secret must not land there
        log.warning(
            "created %s with an admin token, saved to %s (mode 0600; not printed:"
            " stderr is not a terminal): export HASHMATCH_TOKEN=$(cat %s)",
            auth_path, saved, saved,
        )  # fmt: skip


def _audit_first_admin(config: Any, token: str) -> None:
    """Record the admin token the first start created in the audit log of the store, as
    ``hashmatch token`` records the tokens it makes (token.create, actor ``serve``).

    Why: every other token was audited; the first admin's, the most powerful, was in
    no audit log at all (only in a start-up log line, without its digest)."""
    from hashmatch.server.tokens_audit import first_admin_change, record_token_edit

    change = first_admin_change(config.auth_path, token)
    said = record_token_edit(
        change, "create", Path(config.data_dir), "serve", on_wait=log.info
    ).replace("the edit is made", "the first admin token is made")
    (log.warning if said.startswith("warning") else log.info)("%s", said)


def _load_tokens(path: Path) -> Any:
    """The tokens file as ``serve`` uses it, at start-up and on SIGHUP alike: anything
    that makes it unusable (unreadable, not UTF-8 or TOML, a typo, no tokens: nobody
    could call) is a HashmatchError naming the file."""
    from hashmatch.server.auth import TokenAuth

    try:
        auth = TokenAuth.from_file(path)
    except OSError as exc:
        raise HashmatchError(f"{path}: {exc.strerror or exc}") from None
    if not len(auth):
        raise HashmatchError(f"{path} holds no tokens")
    return auth


def _warn_if_writable(path: Path) -> None:
    """Warn when others may write the tokens file: at start-up and on every reload, since
    a file replaced or chmod-ed since start-up is the one now trusted."""
    from hashmatch.server.auth import permission_warning

    unsafe = permission_warning(path)
    if unsafe:
        log.warning("WARNING: %s", unsafe)


def _reload_tokens(server: Any, path: Path) -> None:
    """SIGHUP: read the tokens file again; the old tokens stay if it is unusable."""
    try:
        reloaded = _load_tokens(path)
    except HashmatchError as exc:
        log.warning("kept the old tokens: %s", exc)
    except Exception:  # a bug: a reload must never end a running server
        log.exception("kept the old tokens: reloading %s failed", path)
    else:
        server.host.auth = reloaded
        log.info("reloaded %s (%d tokens)", path, len(reloaded))
        _warn_if_writable(path)


def _reload_certificates(server: Any) -> None:
    """SIGHUP: read the TLS files again (a renewal); the served ones stay if unusable."""
    try:
        reloaded = server.reload_certificates()
    except OSError as exc:  # names the file, as at start-up
        log.warning("kept the old certificate: %s", exc)
    except Exception:  # a bug: a reload must never end a running server
        log.exception("kept the old certificate")
    else:
        if reloaded:
            cert = server.config.tls_cert
            log.info("reloaded the certificate %s (new connections get it)", cert)


def _bound_address(listen: str, port: int | None) -> str:
    """``listen`` with the port the server got for ``:0``: 'serving on 127.0.0.1:0'
    told a script or an operator nothing about where to connect."""
    host, _, given = listen.rpartition(":")
    return f"{host}:{port}" if given == "0" and port else listen


# -- token ------------------------------------------------------------------------------


@click.command("token")
@click.argument("tenant")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["match", "export", "write", "admin"]),
    default=("match",),
    show_default=True,
)
@click.option("--all-lists", is_flag=True, help="Sees every list (an operator, not a tenant).")
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Default: the tokens file `hashmatch serve` reads with the same --config and "
    "environment (auth_file, else <data_dir>/auth.toml; else ./hashmatch-data/auth.toml).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="The server's TOML config file (default $HASHMATCH_CONFIG).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Serve's data dir (default: as serve resolves it, from --config or"
    " $HASHMATCH_DATA_DIR): its auth.toml, and the store whose audit log records the"
    " new token.",
)
@ACTOR_OPTION
def token(
    tenant: str,
    roles: tuple[str, ...],
    all_lists: bool,
    auth_file: str | None,
    config_file: str | None,
    data_dir: str | None,
    actor: str,
) -> None:
    """Create a token for TENANT, store its SHA-256 in the tokens file, print the token once.

    \b
    Example:
      hashmatch token acme --role match --role write
    Send the server SIGHUP (or restart it) to load new tokens. A tenant that has a
    token already gets another with `hashmatch tokens add` (rotation, revocation and
    listing: `hashmatch tokens --help`). Audited as token.create. A new tokens file
    starts with tenant admin (every role, all lists; its token saved to admin.token):
    `hashmatch token admin` on one prints that admin's token.
    """
    import secrets

    from hashmatch.server.auth import FIRST_ADMIN, bootstrap_admin, hash_token, tenant_entry
    from hashmatch.server.commands.token_created import say_token_created
    from hashmatch.server.commands.tokens import audit_edit, resolve_files, short_digest
    from hashmatch.server.config import read_toml
    from hashmatch.server.tokens_audit import first_admin_change
    from hashmatch.server.tokens_file import Change, TenantTokens, line_end

    if not tenant.strip():
        raise click.ClickException(f"not a tenant name: {tenant!r}")
    files = resolve_files(auth_file, config_file, data_dir)
    path = files.tokens
    if tenant == FIRST_ADMIN and not path.exists():
        _first_admin(files, roles, actor)
        return
    new = secrets.token_urlsafe(32)
    # the audit's rows: the tenants this run wrote, as the file now holds them
    created = [TenantTokens(tenant, tuple(roles), all_lists, (hash_token(new),))]
    try:
        entry = tenant_entry(tenant, new, roles, all_lists=all_lists)
        admin = bootstrap_admin(path)  # a new file gets the admin `hashmatch serve` would create
        if admin:
            created[:0] = first_admin_change(path, admin).after
            click.echo(
                f"created {path} with an admin token (saved to {path.parent / 'admin.token'})",
                err=True,
            )
        with _locked_for_append(path) as fh:
            if tenant in (read_toml(path).get("tenants") or {}):
                raise click.ClickException(
                    f"tenant {tenant!r} already exists in {path}: `hashmatch tokens add"
                    f" {shlex.quote(tenant)}` gives it another token (a rotation)"
                )
            end = line_end(path.read_bytes().decode("utf-8", "replace"))  # CRLF stays CRLF
            fh.write(("\n" + entry).replace("\n", end))
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except HashmatchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(new)  # before the audit: the file holds its digest, whatever happens next
    audit_edit(Change(path, before=[], after=created), "create", files, actor)
    say_token_created(tenant, roles, all_lists, short_digest(created[-1].digests[0]), path,
                      files.data_dir)  # fmt: skip


def _first_admin(files: Any, roles: tuple[str, ...], actor: str) -> None:
    """``hashmatch token admin`` on a tokens file not made yet: make it holding the
    admin a new file starts with (every role, all lists; as ``serve``'s first start),
    print its token (also saved to admin.token) and audit it as token.create.

    Why: the new file got that admin first, then the tenant asked for was refused as
    already there: an exit 1 with the file made, a token saved and no audit row. A
    --role other than every role is refused before anything is written."""
    from hashmatch.server.auth import FIRST_ADMIN, ROLES, bootstrap_admin
    from hashmatch.server.commands.tokens import audit_edit
    from hashmatch.server.tokens_audit import first_admin_change

    path = files.tokens
    given = click.get_current_context().get_parameter_source("roles")
    if given is click.core.ParameterSource.COMMANDLINE and set(roles) != set(ROLES):
        raise click.ClickException(
            f"{path} does not exist yet, and a new tokens file starts with tenant"
            f" {FIRST_ADMIN!r} holding every role ({','.join(ROLES)}) and all lists:"
            f" nothing written. Run `hashmatch token {FIRST_ADMIN}` without --role for its"
            " token, or give the tenant with these roles another name (`hashmatch token"
            " NAME`, which makes the file with that admin too)"
        )
    try:
        admin = bootstrap_admin(path)
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot create the tokens file: {exc}") from None
    if admin is None:  # another process made the file meanwhile: its admin stands
        raise click.ClickException(
            f"tenant {FIRST_ADMIN!r} already exists in {path} (made meanwhile by another"
            f" process): `hashmatch tokens add {FIRST_ADMIN}` gives it another token"
        )
    click.echo(
        f"created {path} with tenant {FIRST_ADMIN!r} (roles {','.join(ROLES)}, all lists;"
        f" its token also saved to {path.parent / 'admin.token'})",
        err=True,
    )
    click.echo(admin)  # before the audit: the file holds its digest, whatever happens next
    audit_edit(first_admin_change(path, admin), "create", files, actor)


@contextmanager
def _locked_for_append(path: Path) -> Iterator[Any]:
    """``path`` opened for appending, under an exclusive ``flock`` held until the block
    ends (the file is written when it does).

    Why: two ``hashmatch token`` runs for the same tenant (a provisioning script run
    twice at once) both found no such tenant and both appended it; a tokens file with a
    table twice is not TOML, so the next SIGHUP kept the old tokens and the next restart
    failed. The lock makes check-then-append one step. Appending in place (not a temp
    file renamed over it) keeps the file's owner, mode and inode, which the lock is on:
    ``sudo hashmatch token`` as root must not leave a file the server's user cannot read.
    """
    from hashmatch.server.tokens_file import locked

    with locked(path, "a") as fh:  # the file the path names now: `tokens revoke` replaces it
        yield fh


# -- remote -----------------------------------------------------------------------------


def _parse_hash_arg(text: str, default_type: str) -> tuple[str, str]:
    if ":" in text:
        kind, _, value = text.partition(":")
        return kind, value
    return default_type, text


def _hash_args(hashes: Sequence[str], signal_type: str) -> list[tuple[str, str]]:
    """The HASHES arguments of ``remote match``/``remote retract`` as (type, hex); bare
    hex of another type's length with no --type given is refused here, before any
    request, with the local verbs' hint (the server would refuse it as pdq).

    Why: ``remote match <an MD5>`` answered only the server's "INVALID_ARGUMENT: pdq
    hash must be 64 hex characters, got 32"; ``hashmatch match`` says how to give the
    type. The server's refusal of what is sent is unchanged."""
    given = click.get_current_context().get_parameter_source("signal_type")
    out = [_parse_hash_arg(h, signal_type) for h in hashes]
    if given is not click.core.ParameterSource.DEFAULT:
        return out
    from hashmatch.server.commands.bare_hex import bare_hex_refusal

    for i, text in enumerate(hashes):
        why = None if ":" in text else bare_hex_refusal(text)
        if why:
            raise click.ClickException(f"hashes[{i}]: {why}")
    return out


#: The client's TLS arguments as :func:`server_access_options` names them
TLS_OPTIONS = {"root_certificates": "--ca", "client_cert": "--cert", "client_key": "--key"}


def server_access_options(f):
    """--token-file, --ca, --cert, --key and --server-name: how a verb reaches a server
    behind a private CA or mutual TLS (``remote``, ``scan``/``rescan --server``,
    ``mirror``); see :func:`connect`. The four files also read ``$HASHMATCH_<NAME>``
    (:data:`ACCESS_ENV`). --server-name (the name the certificate is checked for) was
    ``remote``'s only, though the hint for a certificate of another name tells every
    verb to use it.

    Why the environment: against a mutual-TLS server every call needed all three files
    on the command line, where ``--server`` and ``--token`` had ``$HASHMATCH_SERVER`` and
    ``$HASHMATCH_TOKEN`` (a probe, a cron line, a shell session)."""
    from hashmatch.server.config import ACCESS_ENV  # serve allows them in its environment

    path = click.Path(exists=True, dir_okay=False)
    for option in reversed([
        click.option("--token-file", type=path, envvar=ACCESS_ENV["token_file"],
                     help="Bearer token from a file (beats $HASHMATCH_TOKEN;"
                          " $HASHMATCH_TOKEN_FILE)."),
        click.option("--ca", type=path, envvar=ACCESS_ENV["ca"],
                     help="CA certificate of the server (implies TLS; $HASHMATCH_CA)."),
        click.option("--cert", type=path, envvar=ACCESS_ENV["cert"],
                     help="Client certificate, mutual TLS (with --key; $HASHMATCH_CERT)."),
        click.option("--key", type=path, envvar=ACCESS_ENV["key"],
                     help="Client key, mutual TLS (with --cert; $HASHMATCH_KEY)."),
        click.option("--server-name", metavar="NAME",
                     help="Check the server's certificate for NAME, not the --server host."),
    ]):  # fmt: skip
        f = option(f)
    return f


def connect(
    server: str,
    token: str | None,
    tls: bool,
    *,
    token_file: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    **client_options: Any,
):
    """A client for the options of :func:`server_access_options` (plus --token, --tls):
    --token-file read as :func:`_token_from_file` does, a lone --cert or --key refused
    (grpcio would abort the process), an unusable token or file one line."""
    from hashmatch.server.client import HashmatchClient
    from hashmatch.server.client_shared import PlaintextTokenWarning
    from hashmatch.server.client_tls import TLSFileError

    if token_file:
        token = _token_from_file(click.get_current_context(), token_file, token)
    if bool(cert) != bool(key):  # grpcio would abort the process (SIGABRT) on a lone cert
        raise click.UsageError("--cert and --key go together (mutual TLS): give both")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PlaintextTokenWarning)
            client = HashmatchClient(server, token=token, tls=tls, root_certificates=ca,
                                     client_cert=cert, client_key=key,
                                     **client_options)  # fmt: skip
    except TLSFileError as exc:  # named as the options it came from
        raise click.ClickException(exc.described(_tls_option_names())) from None
    except (ValueError, OSError) as exc:  # a token grpcio cannot send, an unreadable file
        raise click.ClickException(str(exc)) from None
    for found in caught:  # ours as one line on stderr, not a Python warning's two
        if issubclass(found.category, PlaintextTokenWarning):
            click.echo(f"hashmatch: warning: {found.message}", err=True)
        else:
            warnings.warn_explicit(found.message, found.category, found.filename, found.lineno)
    return client


def _tls_option_names() -> dict[str, str]:
    """:data:`TLS_OPTIONS`, each read from the environment named with its variable too
    (``--key ($HASHMATCH_KEY)``): a file the command line does not show was named as if
    given there, and the caller looked for an option it had not typed."""
    from hashmatch.server.config import ACCESS_ENV

    ctx = click.get_current_context(silent=True)
    names = dict(TLS_OPTIONS)
    for argument, option in TLS_OPTIONS.items():
        param = option.removeprefix("--")
        source = ctx.get_parameter_source(param) if ctx is not None else None
        if source is click.core.ParameterSource.ENVIRONMENT:
            names[argument] = f"{option} (${ACCESS_ENV[param]})"
    return names


def unauthenticated_hint(details: str) -> str:
    """What to do about an UNAUTHENTICATED reply. Without a token: give one. With one the
    server does not know, the usual cause is a token made by ``hashmatch token`` after the
    server started: it reads the tokens file at start-up and on SIGHUP only (the hint used
    to say "give a token with --token" to a caller who had given one)."""
    if details.startswith("missing"):
        return "give a token with --token, --token-file or HASHMATCH_TOKEN"
    return (
        "the server does not know this token: one made by `hashmatch token` after the"
        " server started is loaded when the server gets SIGHUP (`kill -HUP <its pid>`,"
        " `systemctl reload hashmatch`) or restarts"
    )


@click.group("remote", cls=RemoteGroup)
@click.option(
    "--server",
    default=lambda: os.environ.get("HASHMATCH_SERVER", DEFAULT_SERVER),
    show_default="$HASHMATCH_SERVER or 127.0.0.1:50051",
)
@click.option("--token", envvar="HASHMATCH_TOKEN", help="Bearer token ($HASHMATCH_TOKEN).")
@click.option("--tls", is_flag=True, help="Use TLS (system roots unless --ca).")
@server_access_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds per call.")  # fmt: skip
@click.pass_context
def remote(ctx: click.Context, server, token, tls, token_file, ca, cert, key, server_name,
           timeout) -> None:  # fmt: skip
    """Call a running hashmatch server (prints JSON, one object per line)."""
    client = connect(server, token, tls, token_file=token_file, ca=ca, cert=cert, key=key,
                     server_name=server_name, timeout=timeout)  # fmt: skip
    ctx.obj = client
    ctx.call_on_close(client.close)


def _token_from_file(ctx: click.Context, token_file: str, token: str | None) -> str:
    """--token-file's token: it beats $HASHMATCH_TOKEN (an explicit option wins over the
    environment), but giving --token as well on the command line is ambiguous; --token
    given on the command line beats $HASHMATCH_TOKEN_FILE."""
    command_line = click.core.ParameterSource.COMMANDLINE
    if token and ctx.get_parameter_source("token") is command_line:
        if ctx.get_parameter_source("token_file") is not command_line:
            return token
        raise click.UsageError("give --token or --token-file, not both")
    try:
        text = Path(token_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"--token-file {token_file}: {exc}") from None
    if not text:
        raise click.ClickException(f"--token-file {token_file}: the file is empty")
    return text


def _ingest_progress(exc: grpc.RpcError, details: str) -> str:
    """For an ingest stream that failed part way (e.g. its deadline passed) without the
    server's own "were stored" count: how far it got, and that re-running is safe."""
    import grpc

    from hashmatch.server.client_shared import CONNECT_FAILED

    sent = getattr(exc, "signals_sent", 0)
    # only a stream cut off part way can have stored some of it: not a refused connection,
    # a bad token, a missing role or list, or a server that says what it stored
    cut_off = exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                             grpc.StatusCode.UNAVAILABLE)  # fmt: skip
    refused = CONNECT_FAILED in details and not getattr(exc, "reached_server", False)
    if not sent or not cut_off or "stored" in details or refused:
        return ""
    return (
        f"\n  ({sent} of {exc.signals_total} signals were sent; the server stores each"
        " message as it arrives, so some may be stored: re-running the same ingest is"
        " harmless, stored ones count as unchanged)"
    )


def _retract_progress(exc: grpc.RpcError) -> str:
    """For a retract whose later request failed: what the earlier ones retracted."""
    import grpc

    done = getattr(exc, "retracted_before", None)
    if done is None:
        return ""
    if not (done.retracted or done.not_found_total):
        cut_off = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        if not (cut_off and getattr(exc, "reached_server", False)):
            return ""
        return (  # a server killed mid-request: its retries "failed to connect"
            "\n  (the server took a request and went away before answering: it may have"
            " applied it; re-running the same retract is harmless)"
        )
    return (
        f"\n  (the requests before it retracted {done.retracted} signals, {done.not_found_total}"
        " targets not found; re-running the same retract is harmless)"
    )


def _rpc(fn):
    """Turn gRPC errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import grpc

        from hashmatch.server.errors import bad_request_fields

        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            details = exc.details() or ""
            violations = bad_request_fields(exc)
            if getattr(exc, "item_offsets", None) and violations:
                # a part of a split match: the server's index counts in that part only
                details = "; ".join(f"{f}: {d}" for f, d in violations)
            # the details already say "field: what"; list only what they leave out
            fields = "".join(f"\n  {f}: {d}" for f, d in violations if f"{f}: {d}" not in details)
            hint = ""
            if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                hint = f"\n  ({unauthenticated_hint(details)})"
            elif exc.code() is grpc.StatusCode.UNAVAILABLE:
                # the client's retries asked already; a call it does not retry: ask now
                found = getattr(exc, "connection_hint", None)
                found = _connection_hint(details) if found is None else found
                hint = "\n " + found if found else ""
            hint += _ingest_progress(exc, details) + _retract_progress(exc)
            raise click.ClickException(f"{exc.code().name}: {details}{fields}{hint}") from None
        except (OSError, HashmatchError) as exc:  # a wait for SERVING that ran out too
            message = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" not in message:  # else its hint says why already
                note = _connection_hint(message)
                message += f"\n {note}" if note and note not in message else ""
            raise click.ClickException(message) from None

    return wrapper


_FIRST_AT_RECORD = re.compile(r"\(first at record (\d+)\)")


def _file_line(found: re.Match, lines: list[int]) -> str:
    """``(first at line L)`` for the server's ``(first at record N)``, as the local
    ingest words a duplicate, when record N came from line L of the file."""
    index = int(found.group(1))
    if 0 <= index < len(lines) and lines[index] >= 0:
        return f"(first at line {lines[index]})"
    return found.group(0)


def _connection_hint(details: str) -> str:
    """For a call that never connected: what the client's ``connection_hint`` finds
    wrong with its TLS setup (asked of the server where gRPC's words cannot tell: its
    own message may name another address). The library's, so the CLI and a pipeline
    read the same hints."""
    from hashmatch.server.client_shared import tls_hint

    client = click.get_current_context().obj
    if not hasattr(client, "connection_hint"):
        return tls_hint(details)
    return client.connection_hint(details)[0]


@remote.command("match")
@click.argument("hashes", nargs=-1)
@click.option("--type", "signal_type", default="pdq", show_default=True)
@click.option("--media", multiple=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--media-type", "media_types", multiple=True,
              help="Types to hash media with; repeatable (default: vpdq for videos by "
              "extension, else pdq).")  # fmt: skip
@click.option("--threshold", type=INT32, help="Max distance (default: the type's).")
@click.option("--list", "lists", multiple=True, help="Only these lists.")
@click.option("--max-results", type=UINT32, default=0, help="Per query, nearest first (0 = all).")
@click.option("--dihedral", is_flag=True, help="PDQ: also match rotated/flipped copies.")
@click.option("--trim-borders", is_flag=True, help="Also match with borders/bars trimmed.")
@click.option("--all-frames", is_flag=True, help="PDQ: every frame of an animation.")
@click.option("--uncrop", is_flag=True, help="PDQ: also match slightly cropped copies.")
@click.option("--derotate", is_flag=True, help="PDQ: also match slightly rotated copies.")
@click.option("--upscale-small", is_flag=True, help="PDQ: also match small images enlarged.")
@click.option("--upscale-small-replicate", is_flag=True,
              help="PDQ: also match small images enlarged by pixel repetition.")  # fmt: skip
@click.option("--upscale-small-phases", is_flag=True,
              help="PDQ: also match small images repeated, moved by half a pixel.")  # fmt: skip
@click.option("--min-quality", type=INT32, help="PDQ quality floor (default 50).")
@click.option("--low-quality-queries", type=click.Choice(["match_quality_stored", "skip"]),
              default=None, help="Under the floor: match stored quality >= it only "
              "(server default) or skip (HMA).")  # fmt: skip
@click.pass_obj
@_rpc
def remote_match(client, hashes, signal_type, media, media_types, **options) -> None:
    """Match HASHES (hex, or TYPE:HEX) and/or --media files.

    \b
    A --media file that holds a video's vPDQ (vpdq text, python-threatexchange's
    serialized list, or the CSV of `hashmatch hash clip.mp4 --format te`, as
    `hashmatch match` reads) is matched as that video's frames;
    its result follows the media results (source SOURCE_VIDEO, index among them).

    \b
    Example:
      hashmatch remote match pdq:f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22
      hashmatch remote match --media photo.jpg --media clip.vpdq
    """
    from hashmatch.server.commands.store import vpdq_hash_file
    from hashmatch.v1.matcher_pb2 import VideoQuery

    items, item_paths, videos = [], [], []
    for path in media:
        video = vpdq_hash_file(path)  # None: media bytes, hashed by the server
        if video is None:
            items.append(Path(path).read_bytes())
            item_paths.append(path)
        else:
            frames = [bytes(code).hex() for code in video.codes]
            videos.append(VideoQuery(signal_type="vpdq", frames=frames, qualities=video.qualities))
    reply = client.match(
        _hash_args(hashes, signal_type),
        media=items,
        media_types=media_types or _default_media_types(tuple(item_paths)),
        videos=videos,
        **options,
    )
    for result in reply.results:
        _emit(result)


def _default_media_types(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The files' types when --media-type is not given: vPDQ for videos (by extension),
    PDQ otherwise, as local ``match``, ``hash`` and ``scan`` choose.

    Why: the server hashes every media item of a request with the same types (default
    pdq), so ``remote match --media clip.mp4`` was refused ('looks like a video; hash it
    as vpdq'); images and videos together cannot share one request's types at all."""
    if not paths:
        return ()
    from hashmatch.server.commands.hashing import default_media_types  # cv2: media only

    kinds = {default_media_types(p) for p in paths}
    if len(kinds) > 1:
        raise click.UsageError(
            "--media: images and videos go in separate calls (the server hashes every"
            " file of a call with the same --media-type)"
        )
    return kinds.pop()


@remote.command("hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "signal_types", multiple=True, default=("pdq",), show_default=True)
@click.option(
    "--dihedral", is_flag=True,
    help="PDQ: also the 7 rotations/flips, pdqhash's compute_dihedral rows (match --dihedral"
    " hashes each re-oriented image instead: its rows 1-7 differ).",
)  # fmt: skip
@click.pass_obj
@_rpc
def remote_hash(client, files, signal_types, dihedral) -> None:
    """Hash media FILES on the server."""
    reply = client.hash([Path(p).read_bytes() for p in files], signal_types, dihedral=dihedral)
    for path, item in zip(files, reply.items, strict=True):
        data = message_json(item)
        data["file"] = path
        click.echo(json.dumps(data, sort_keys=True))


#: Lines that do not parse, kept to report (all are counted).
MAX_UNPARSED_SHOWN = 1000


class _SignalFile:
    """FILE's signals, streamed: parsed once up front to count them, note which file
    line each comes from (the server's rejections name stream positions) and keep the
    lines that do not parse; then :meth:`signals` parses it again for each send (and
    each retry), so no signal is held in memory (1M signals buffered took 1.8 GB).
    Uses the store's parsers (same formats as ``hashmatch ingest``)."""

    def __init__(
        self, path: str, fmt: str | None, default_type: str | None, *, nameless: bool = False
    ):
        from array import array

        self.path, self.fmt, self.default_type = path, fmt, default_type
        self.nameless = nameless  # stdin's copy: its name is ours, not the sender's
        self.lines = array("q")  # file line of each signal, in stream order
        self.unparsed: list[str] = []
        self.unparsed_total = 0
        for item in self._records():
            if isinstance(item, str):
                self.unparsed_total += 1
                if len(self.unparsed) < MAX_UNPARSED_SHOWN:
                    self.unparsed.append(item)
            else:
                self.lines.append(item.line if item.line is not None else -1)

    def _records(self) -> Iterator:
        """Parsed records, or each unparsable line's rejection text."""
        from hashmatch.engine.ingest import read_records

        options = {"format": self.fmt, "signal_type": self.default_type}
        if not self.nameless:
            yield from self._parsed(read_records(self.path, **options))
            return
        with open(self.path, "rb") as raw:  # as `hashmatch ingest -` reads it: no name
            yield from self._parsed(read_records(raw, **options))

    @staticmethod
    def _parsed(records: Iterable) -> Iterator:
        """Records with their type's registered name, as the local ingest names them
        (``signal_types.get``: spaces, case, aliases), or each bad line's rejection text.

        Why: this compared ``signal_type.lower()`` with "vpdq" itself, so a CSV whose
        type column read `` vpdq`` sent the serialized frame list as one hash, which
        the server rejected ("vpdq hash must be 64 hex characters, got 390") while
        ``hashmatch ingest`` stored the same row."""
        from dataclasses import replace

        from hashmatch.engine import signal_types
        from hashmatch.engine.errors import UnknownSignalType
        from hashmatch.engine.store import Rejection, frames_from_value

        for item in records:
            if isinstance(item, Rejection):
                yield str(item)
                continue
            try:
                name = signal_types.get(item.signal_type).name
            except UnknownSignalType:  # the server names it, on the file's line
                yield item
                continue
            item = replace(item, signal_type=name) if name != item.signal_type else item
            if name != "vpdq":
                yield item
                continue
            try:  # an HMA/`hashmatch hash --format te` row: the frame list as its value
                yield frames_from_value(item)
            except HashmatchError as exc:
                yield str(Rejection(exc.message, line=item.line))

    def signals(self) -> Iterator:
        """The ``Signal`` messages, parsed afresh."""
        from hashmatch.server.client import signal, video_signal

        for item in self._records():
            if isinstance(item, str):
                continue
            if item.frames is not None:
                yield video_signal(
                    [bytes(code).hex() for code in item.frames],
                    qualities=item.frame_qualities or (),
                    timestamps=item.timestamps or (),
                    labels=item.labels,
                    external_id=item.external_id or "",
                    expires_at=item.expires_at,
                )
            else:
                yield signal(
                    item.signal_type,
                    item.hash_hex,
                    labels=item.labels,
                    external_id=item.external_id or "",
                    quality=item.quality,
                    expires_at=item.expires_at,
                )


@contextmanager
def _readable_twice(file: str) -> Iterator[str]:
    """FILE's path; stdin ('-') and a pipe (``<(generate-hashes)``, a named pipe) are
    first copied to a temporary file (in $TMPDIR), as FILE is read once per send and a
    pipe cannot be read again. The copy has FILE's very name (in a temporary directory):
    the name tells a format (``.jsonl``), a te-simple dump's type (``pdq.csv``) and a
    vPDQ file's external id (its stem), as for ``hashmatch ingest``; stdin's copy is read
    as nameless (see :class:`_SignalFile`)."""
    from hashmatch.engine.ingest import check_source

    if file != "-":
        try:
            check_source(file)
        except HashmatchError as exc:
            raise click.ClickException(exc.message) from None
        if not stat.S_ISFIFO(os.stat(file).st_mode):
            yield file
            return
    with tempfile.TemporaryDirectory(prefix="hashmatch-ingest-") as folder:
        copy = Path(folder) / ("stdin" if file == "-" else Path(file).name)
        with open(copy, "wb") as out:
            if file == "-":
                shutil.copyfileobj(sys.stdin.buffer, out)
            else:
                with open(file, "rb") as pipe:
                    shutil.copyfileobj(pipe, out)
        yield str(copy)


@remote.command("ingest")
@click.argument("list_name")
@click.argument("file", type=click.Path(allow_dash=True))
@click.option("--format", "fmt",
              type=click.Choice(["auto", "jsonl", "csv", "hex", "vpdq", "te-simple"]),
              default="auto", show_default=True,
              help="auto: detected from the file.")  # fmt: skip
@click.option(
    "--type", "signal_type", default=None,
    help="Signal type of plain hex lines (required for them, as `hashmatch ingest`) or of a"
    " te-simple dump (default: from its file name).",
)  # fmt: skip
@click.option("--source", default="")
@click.option("--strict", is_flag=True, help="Reject the whole batch if any line is bad.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.pass_obj
@_rpc
def remote_ingest(client, list_name, file, fmt, signal_type, source, strict, batch_size) -> None:
    """Add the signals in FILE ('-' = stdin) to LIST_NAME on the server.

    \b
    FILE: the formats `hashmatch ingest` reads (jsonl, csv, hex or TYPE HASH lines,
    te-simple dumps, a vPDQ text file; gzip read through).
    Exits 1 when every signal was rejected.

    \b
    Example:
      hashmatch remote ingest partner-a hashes.csv --source partner-a-2026-11
    """
    from hashmatch.server import interrupts
    from hashmatch.server.client import STOP_GRACE_SECONDS, IngestStopped
    from hashmatch.server.interrupts import Interrupted

    with _readable_twice(file) as path:
        fmt = None if fmt == "auto" else fmt
        try:
            parsed = _SignalFile(path, fmt, signal_type, nameless=file == "-")
        except InvalidInput as exc:  # the file as a whole (a CSV header): name it
            if exc.field == "file":  # (its message does)
                raise
            raise click.ClickException(f"{file}: {exc}") from None
        if strict and parsed.unparsed:
            raise click.ClickException(f"refused (strict): {parsed.unparsed[0]}")
        if not parsed.lines:  # nothing parsed: say why instead of the server's "no signals"
            shown = "\n  ".join(parsed.unparsed[:20]) or "the file holds no signals"
            raise click.ClickException(f"{file}: nothing to ingest:\n  {shown}")
        # a stop signal (Ctrl-C) ends the stream and waits a while for the server's
        # reply, which says exactly what is stored; a second one ends the process
        notice = (
            f"no more signals sent; waiting up to {STOP_GRACE_SECONDS:g} s for the server"
            " to say what it stored (again to quit now)"
        )
        known = _visible_list_names(client)  # to say when this ingest creates the list
        try:
            with interrupts.cooperative(notice) as stop:
                reply = client.ingest(list_name, parsed.signals, total=len(parsed.lines),
                                      source=source, strict=strict, batch_size=batch_size,
                                      stop=stop)  # fmt: skip
        except (Interrupted, IngestStopped) as exc:  # then `interrupted (SIGINT)`, exit 130
            _say_remote_ingest_stopped(file, exc, list_name)
            if isinstance(exc, Interrupted):
                raise
            raise Interrupted(interrupts.received() or signal.SIGINT) from None
        if stop.is_set():  # stopped, and the server said what it stored
            _say_remote_ingest_stored(file, reply, list_name, len(parsed.lines))
            raise Interrupted(interrupts.received() or signal.SIGINT)
    lines = parsed.lines
    data = message_json(reply)
    for item in data.get("rejections", []):  # stream index -> the file's line
        index = int(item.get("index", 0))
        if 0 <= index < len(lines) and lines[index] >= 0:
            item["line"] = lines[index]
        # "duplicate ... (first at record 0)": the server counts the stream, not the file
        item["reason"] = _FIRST_AT_RECORD.sub(
            lambda m: _file_line(m, lines), item.get("reason", "")
        )
    if parsed.unparsed_total:  # lines that did not parse here count as rejected too
        data["unparsed"] = parsed.unparsed  # the first MAX_UNPARSED_SHOWN
        data["unparsed_total"] = parsed.unparsed_total
        data["rejected"] = reply.rejected + parsed.unparsed_total
    click.echo(json.dumps(data, sort_keys=True))
    if known is not None and list_name.strip() not in known and reply.added:
        click.echo(
            f"list {list_name.strip()!r} is new: created on the server by this ingest (a typo"
            " in LIST_NAME? `hashmatch lists delete` on the server removes it)",
            err=True,
        )
    # exit 1 when every signal was rejected, as `hashmatch ingest` does: a script must
    # not read that as success
    if data["rejected"] and not (reply.added or reply.updated or reply.unchanged):
        raise click.ClickException(f"{file}: nothing stored: all {data['rejected']} rejected")


def _visible_list_names(client: Any) -> set[str] | None:
    """The lists the caller sees before its ingest, or None when that is not known at
    once: a token without the match role, a server down or slow (asked for at most
    ``_LISTING_SECONDS``, or the call's --timeout when shorter: the ingest itself then
    meets the server as it did, waiting no longer than before but those seconds).

    Why: only a caller that sees every list (an admin) can create one by ingesting, and
    a typo in LIST_NAME then made a new list without a word; `hashmatch ingest` says
    "is new: created by this ingest" on stderr, and now so does `remote ingest`."""
    import grpc

    timeout = min(_LISTING_SECONDS, client.timeout or _LISTING_SECONDS)
    try:
        return {x.name for x in client.list_hash_lists(timeout=timeout).lists}
    except grpc.RpcError:
        return None


#: How long ``remote ingest`` asks for the lists it may see (:func:`_visible_list_names`).
_LISTING_SECONDS = 2.0


def _say_remote_ingest_stopped(file: str, exc: BaseException, list_name: str) -> None:
    """On stderr, for a stop without the server's reply (it did not come in time, or
    the stop came before the stream): how much of FILE may be stored on the server,
    and that a re-run is safe. The server commits each message as it arrives and
    acknowledges none before the reply, so what was sent is an upper bound."""
    from hashmatch.server.interrupts import say_ingest_stopped

    sent = getattr(exc, "signals_sent", 0)
    total = getattr(exc, "signals_total", None)
    of = f" of {total:,}" if total is not None else ""
    why = f" ({exc})" if isinstance(exc, Exception) and str(exc) else ""
    said = (
        f"{file}: stopped with {sent:,}{of} signal(s) sent{why}: the server stores each"
        f" message as it arrives, so up to {sent:,} are stored into {list_name!r}, none"
        " after them"
        if sent
        else f"{file}: stopped before any signal was sent: nothing was stored"
    )
    say_ingest_stopped(said)


def _say_remote_ingest_stored(file: str, reply: Any, list_name: str, total: int) -> None:
    """On stderr, for a stop the server answered: what its reply says it stored (exact:
    the stream ended at a message boundary and the server replied for all it got).
    A stop that came once every signal was sent (the wait for the reply) ended
    nothing: said so, not "part way" (the reply counts each signal it got once, as
    stored or rejected, so all of ``total`` answered means all were sent)."""
    from hashmatch.server.interrupts import say_ingest_stopped

    stored = reply.added + reply.updated + reply.unchanged
    when = (
        f"stopped after every signal was sent (all {total:,})"
        if stored + reply.rejected >= total
        else f"stopped part way through its {total:,} signal(s)"
    )
    said = (
        f"{file}: {when}; the server's reply: {stored:,} stored into {list_name!r} (added"
        f" {reply.added}, updated {reply.updated}, unchanged {reply.unchanged}, rejected"
        f" {reply.rejected})"
    )
    say_ingest_stopped(said)


@remote.command("retract")
@click.argument("list_name")
@click.argument("hashes", nargs=-1)
@click.option("--type", "signal_type", default="pdq", show_default=True)
@click.option("--id", "signal_ids", multiple=True, type=INT64, help="Signal id to retract.")
@click.option("--reason", default="")
@click.pass_obj
@_rpc
def remote_retract(client, list_name, hashes, signal_type, signal_ids, reason) -> None:
    """Retract HASHES (hex or TYPE:HEX) and/or --id signals from LIST_NAME."""
    _emit(
        client.retract(
            list_name,
            hashes=_hash_args(hashes, signal_type),
            signal_ids=signal_ids,
            reason=reason,
        )
    )


@remote.command("lists")
@click.pass_obj
@_rpc
def remote_lists(client) -> None:
    """The hash lists this token may see (each with the server's store_id and the
    caller's tenant)."""
    reply = client.list_hash_lists()
    # the reply's own fields, on every list's line: they were dropped, so a mirror's or a
    # scan's operator could not see which store the uids belong to, nor as whom they ask
    whose = {"store_id": reply.store_id, "tenant": reply.tenant}
    for item in reply.lists:
        click.echo(json.dumps({**message_json(item), **whose}, sort_keys=True))
    if not reply.lists:  # it printed nothing at all: as whom, and what to do, were lost
        click.echo(f"hashmatch: {_no_lists_said(reply, with_token=bool(client.metadata))}",
                   err=True)  # fmt: skip


def _no_lists_said(reply: Any, *, with_token: bool) -> str:
    """Why ``remote lists`` printed no list, as far as the reply tells.

    Why: a server without authentication (the caller sent no token and was answered)
    shows every list, so its empty answer was told to grant a list to its 'local'
    tenant; an older server's reply names no tenant nor store (fields it lacks), which
    read as tenant '' and ``tenants grant '' LIST``."""
    store = f" (store {reply.store_id})" if reply.store_id else ""
    if not with_token:
        return (
            f"the server's store{store} holds no hash list (it answered without a token:"
            " no authentication, every list is visible)"
        )
    whom = f"tenant {reply.tenant!r}" if reply.tenant else "this token's tenant"
    grant = shlex.quote(reply.tenant) if reply.tenant else "TENANT"
    return (
        f"no hash list is visible to {whom}{store}: none shared with it yet (on the server:"
        f" `hashmatch tenants grant {grant} LIST`), or the store holds none"
    )


@remote.command("stats")
@click.pass_obj
@_rpc
def remote_stats(client) -> None:
    """Index and store statistics (admin)."""
    _emit(client.stats())


@remote.command("rebuild")
@click.pass_obj
@_rpc
def remote_rebuild(client) -> None:
    """Rebuild the indexes from the store while lookups keep being served (admin)."""
    for progress in client.rebuild(timeout=None):
        _emit(progress)
        if progress.snapshot_error:  # the rebuild is live (exit 0), its snapshot is not
            click.echo(f"warning: {progress.snapshot_error}", err=True)


@remote.command("health")
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for SERVING (a server still loading its index).")  # fmt: skip
@click.pass_obj
@_rpc
def remote_health(client, wait) -> None:
    """The standard gRPC health status (no token needed); exit 0 only when SERVING.

    \b
    For probes and scripts:
      hashmatch remote --server 10.0.0.5:50051 health || restart-it
      hashmatch remote health --wait 120     # after a start: until the index is loaded
    """
    if wait > 0:
        client.wait_until_serving(timeout=wait)  # TimeoutError, ConnectionError: _rpc's
    from hashmatch.server.client_shared import HEALTH_CHECK_SECONDS

    # --timeout bounds the check too (a probe's own timeout may be shorter than 5 s)
    status = client.health(timeout=min(client.timeout, HEALTH_CHECK_SECONDS))
    click.echo(json.dumps({"status": status}))
    if status != "SERVING":
        sys.exit(1)


@remote.command("snapshot")
@click.pass_obj
@_rpc
def remote_snapshot(client) -> None:
    """Write an index snapshot on the server (admin)."""
    _emit(client.snapshot())


COMMANDS: list[click.Command] = [serve, token, remote]
