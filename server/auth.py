"""Bearer-token authentication and per-tenant roles.

Tokens live in a TOML file as SHA-256 hex digests only, so a leaked config file
does not leak credentials::

    [tenants.acme]
    tokens_sha256 = ["9f86d08188..."]   # sha256(token).hexdigest()
    roles = ["match", "write"]          # match | export | write | admin
    all_lists = false                   # true: sees every list (the local operator)

A tenant matches only against the hash lists the store shares with it (the engine
enforces that, given the tenant name); ``all_lists`` tenants act as the local admin.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hashmatch.engine.errors import HashmatchError, InvalidInput
from hashmatch.server.config import toml_from_bytes

#: match: look up hashes/media against shared lists; export: also read every hash of
#: those lists (Signals.Changes, what ``rescan --server`` needs) -- a list shared for
#: matching need not be handed over whole; write: ingest/retract; admin: operations.
ROLES = ("match", "export", "write", "admin")
#: the tenant a new tokens file starts with (every role, all lists): see bootstrap_admin
FIRST_ADMIN = "admin"
#: authorization headers :class:`TokenAuth` remembers (a few per token in use)
KNOWN_HEADERS_KEPT = 1024
#: how long a read of the tokens file waits for `hashmatch token` to finish appending
LOCK_WAIT_SECONDS = 10.0


class Unauthenticated(HashmatchError):
    """No token, or a token nobody holds (maps to UNAUTHENTICATED)."""


class Forbidden(HashmatchError):
    """The tenant lacks the role a method needs (maps to PERMISSION_DENIED)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant name (``engine_tenant`` is what the engine sees)."""

    tenant: str
    roles: frozenset[str]
    all_lists: bool = False

    @property
    def engine_tenant(self) -> str | None:
        """None = the local admin view (every enabled list)."""
        return None if self.all_lists else self.tenant

    def require(self, role: str) -> None:
        if role not in self.roles:
            raise Forbidden(
                f"tenant {self.tenant!r} lacks the {role!r} role" + role_hint(self.tenant, role),
                field="authorization",
            )


#: Why a tenant may lack a role it was meant to have, said before how to grant it.
_ROLE_WHY = {
    "export": "tokens made before hashmatch had this role, the first admin token included,"
    " lack it: ",
}


def role_hint(tenant: str, role: str) -> str:
    """How to grant ``role`` to ``tenant``, for a PERMISSION_DENIED message: the caller
    reads the refusal, the operator it is passed to acts on the command (a bare "lacks
    the 'write' role" left them to find `tokens set` and the SIGHUP on their own)."""
    return (
        f" ({_ROLE_WHY.get(role, 'if it should have it: ')}on the server, `hashmatch tokens"
        f' set {shlex.quote(tenant)} --add-role {role}` (or add "{role}" to the tenant\'s'
        " roles in the tokens file), then SIGHUP the server)"
    )


NO_AUTH_PRINCIPAL = Principal("local", frozenset(ROLES), all_lists=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenAuth:
    """Resolves ``authorization: Bearer <token>`` metadata to a :class:`Principal`."""

    def __init__(self, principals_by_digest: Mapping[str, Principal]):
        self._by_digest = dict(principals_by_digest)
        # authorization header -> principal, for headers that authenticated: every call
        # is authenticated twice (app.AuthGate, then calls.rpc), each a SHA-256 of the
        # token. Holds known tokens only (an unknown one is never stored), and is
        # emptied when full (a tenant sending many spellings of its header); a reload
        # makes a new TokenAuth, so a removed token is not remembered past it.
        self._known_headers: dict[str, Principal] = {}

    @classmethod
    def from_mapping(cls, data: Mapping) -> TokenAuth:
        """Parse a tokens file strictly: a typo must fail loudly, not grant or lose access.

        Why: the file is security configuration. ``all_lists = "false"`` read as
        truthy, a misspelt ``role`` key silently meant the default role, and a digest
        under two tenants let the last one win; each is refused naming the tenant.
        """
        unknown_top = sorted(set(data) - {"tenants"})
        if unknown_top:
            raise InvalidInput(
                f"unknown table(s) {unknown_top}: tenants go under [tenants.NAME]",
                field="tenants",
            )
        tenants = data.get("tenants") or {}
        if not isinstance(tenants, Mapping):
            raise InvalidInput("must be tables [tenants.NAME]", field="tenants")
        by_digest: dict[str, Principal] = {}
        for name, entry in tenants.items():
            principal, digests = parse_tenant(name, entry)
            for digest in digests:
                held = by_digest.get(digest)
                if held is not None and held.tenant != name:
                    raise InvalidInput(
                        f"tenant {name!r} has a token digest tenant {held.tenant!r} has too",
                        field="tokens_sha256",
                    )
                by_digest[digest] = principal
        return cls(by_digest)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        """The tokens file at ``path``; every InvalidInput names the file."""
        data = read_tokens_file(path)
        try:
            return cls.from_mapping(data)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        header = None
        for key, value in metadata:
            if key.lower() == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        if not header:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        known = self._known_headers.get(header)
        if known is not None:
            return known
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        # A dict lookup on the SHA-256 of the token: timing can reveal at most which
        # digest prefix was probed, which says nothing useful about any token.
        found = self._by_digest.get(hash_token(token.strip()))
        if found is None:
            raise Unauthenticated("unknown or revoked token")
        if len(self._known_headers) >= KNOWN_HEADERS_KEPT:
            self._known_headers.clear()
        self._known_headers[header] = found
        return found


def read_tokens_file(path: str | Path, wait: float = LOCK_WAIT_SECONDS) -> dict:
    """The tokens file's tables, read under a shared ``flock``: the exclusive one
    ``hashmatch token`` holds while it checks and appends a tenant is waited for (up to
    ``wait`` seconds, then TimeoutError, an OSError).

    Why: a SIGHUP reload (or a start) racing ``hashmatch token`` could read its entry
    half written: "not valid TOML", the old tokens kept and the new one refused until
    the next reload; or, cut after its digest line, a tenant without its roles.
    """
    import fcntl
    import time

    deadline = time.monotonic() + wait
    while True:
        with open(path, "rb") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when fh closes
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"still locked by another process (`hashmatch token`?) after {wait:g} s"
                        ) from None
                    time.sleep(0.01)
            # `hashmatch tokens revoke` replaces the file under the lock: the one waited
            # on is then the old one (a SIGHUP during the edit kept the revoked token)
            held, named = os.fstat(fh.fileno()), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                raw = fh.read()
                break
    return toml_from_bytes(raw, path)


TENANT_KEYS = ("tokens_sha256", "roles", "all_lists")
_HEX = frozenset("0123456789abcdef")


def parse_tenant(name: str, entry: object) -> tuple[Principal, list[str]]:
    """One ``[tenants.NAME]`` table -> its principal and normalised token digests."""
    if not name or not isinstance(entry, Mapping):
        raise InvalidInput(f"tenant {name!r}: not a [tenants.NAME] table", field="tenants")
    unknown = sorted(set(entry) - set(TENANT_KEYS))
    nested = [key for key in unknown if isinstance(entry[key], Mapping)]
    if nested:  # `hashmatch token` before 231bed9 wrote [tenants.a.b] for tenant "a.b"
        dotted = f"{name}.{nested[0]}"
        raise InvalidInput(
            f"[tenants.{dotted}] is a table {nested[0]!r} inside tenant {name!r}: a tenant"
            f" name holding '.' must be quoted, [tenants.{toml_key(dotted)}] (older"
            " `hashmatch token` wrote it unquoted; edit the file, then restart or SIGHUP)",
            field="tenants",
        )
    if unknown:
        raise InvalidInput(
            f"tenant {name!r}: unknown key(s) {unknown} (known: {', '.join(TENANT_KEYS)})",
            field="tenants",
        )
    roles = _string_list(name, entry, "roles", ["match"])
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise InvalidInput(f"unknown role(s) {bad} for tenant {name!r}", field="roles")
    all_lists = entry.get("all_lists", False)
    if not isinstance(all_lists, bool):  # bool("false") is True: only a TOML boolean
        raise InvalidInput(
            f"must be true or false (unquoted) for tenant {name!r}, got {all_lists!r}",
            field="all_lists",
        )
    digests = []
    for digest in _string_list(name, entry, "tokens_sha256", []):
        digest = digest.strip().lower()
        if len(digest) != 64 or not _HEX.issuperset(digest):
            raise InvalidInput(
                f"not a SHA-256 hex digest (64 hex digits) for tenant {name!r}",
                field="tokens_sha256",
            )
        digests.append(digest)
    return Principal(name, frozenset(roles), all_lists), digests


def _string_list(name: str, entry: Mapping, key: str, default: list[str]) -> list[str]:
    """``entry[key]`` as a list of strings (a bare string would iterate as letters)."""
    value = entry.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(
            f'must be a list of strings, e.g. ["..."], for tenant {name!r}, got {value!r}',
            field=key,
        )
    return value


def toml_key(name: str) -> str:
    """``name`` as a quoted TOML key (a basic string): a name holding '.', ' ' or ']'
    stays one key instead of making nested tables or invalid TOML."""
    if not name:
        raise InvalidInput("must not be empty", field="tenant")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise InvalidInput(f"control characters are not allowed: {name!r}", field="tenant")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def permission_warning(auth_path: Path) -> str | None:
    """A warning when others may write the tokens file (group/world-writable, or its
    directory is): anyone who can write it can give themselves every list. Not refused:
    a read-only mount owned by another user (a container secret) is fine and common."""
    for path in (auth_path, auth_path.parent):
        try:
            mode = path.stat().st_mode
        except OSError:
            return None
        if mode & 0o022 and not (path.is_dir() and mode & 0o1000):  # sticky /tmp-like dir
            return (
                f"{path} is writable by others (mode {mode & 0o777:o}): whoever can write"
                " the tokens file can grant themselves every list; chmod go-w it"
            )
    return None


def tenant_entry(name: str, token: str, roles: Iterable[str], *, all_lists: bool = False) -> str:
    """TOML text for one tenant holding ``token`` (stored hashed)."""
    role_list = ", ".join(f'"{r}"' for r in roles)
    return (
        f"[tenants.{toml_key(name)}]\n"
        f'tokens_sha256 = ["{hash_token(token)}"]\n'
        f"roles = [{role_list}]\n"
        f"all_lists = {'true' if all_lists else 'false'}\n"
    )


def admin_token_path(auth_path: Path) -> Path:
    """Where the first start saves its admin token: ``admin.token`` beside the tokens
    file (one name for what writes, announces, undoes and checks it)."""
    return auth_path.parent / "admin.token"


def bootstrap_admin(auth_path: Path) -> str | None:
    """First start with no tokens file: create one holding a fresh admin token.

    Returns the token (shown once by ``hashmatch serve`` and written to
    ``admin.token`` beside the file, mode 0600) or None when the file exists. The tokens
    file is created mode 0600 too (it was the umask's, usually 0644).
    """
    if auth_path.exists():
        return None
    auth_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new data dir
    token = secrets.token_urlsafe(32)
    header = "# hashmatch tokens (SHA-256 digests only). Add tenants with `hashmatch token`.\n\n"
    token_file = admin_token_path(auth_path)
    # Why this order: a full disk used to leave a 0-byte auth.toml (refused at every later
    # start as "holds no tokens"), or an auth.toml whose admin token was never saved.
    # Both files are written whole aside first (names of this process: two processes
    # starting together on a fresh data dir, two servers or serve + `hashmatch token`,
    # must not share a temp file), then auth.toml is created only if absent (link fails
    # if it exists: the loser writes nothing) and the token renamed into place.
    tmp = auth_path.with_name(f".{auth_path.name}.{os.getpid()}.tmp")
    tmp_token = token_file.with_name(f".{token_file.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp_token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        # 0600 like admin.token, whatever the umask: the file holds digests only, but it
        # is the access-control file (who may call, with which roles); only its owner
        # (the server's user) needs to read it, and `hashmatch tokens` keeps its mode.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(header + tenant_entry(FIRST_ADMIN, token, ROLES, all_lists=True))
        try:
            os.link(tmp, auth_path)
        except FileExistsError:
            return None  # another process created it first: its token stands
        os.replace(tmp_token, token_file)
    finally:
        for leftover in (tmp, tmp_token):
            leftover.unlink(missing_ok=True)
    return token
