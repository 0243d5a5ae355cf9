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
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hashmatch.engine.errors import HashmatchError, InvalidInput

#: match: look up hashes/media against shared lists; export: also read every hash of
#: those lists (Signals.Changes, what ``rescan --server`` needs) -- a list shared for
#: matching need not be handed over whole; write: ingest/retract; admin: operations.
ROLES = ("match", "export", "write", "admin")


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
                f"tenant {self.tenant!r} lacks the {role!r} role", field="authorization"
            )


NO_AUTH_PRINCIPAL = Principal("local", frozenset(ROLES), all_lists=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenAuth:
    """Resolves ``authorization: Bearer <token>`` metadata to a :class:`Principal`."""

    def __init__(self, principals_by_digest: Mapping[str, Principal]):
        self._by_digest = dict(principals_by_digest)

    @classmethod
    def from_mapping(cls, data: Mapping) -> TokenAuth:
        by_digest: dict[str, Principal] = {}
        for name, entry in (data.get("tenants") or {}).items():
            roles = frozenset(entry.get("roles", ["match"]))
            bad = sorted(roles - set(ROLES))
            if bad:
                raise InvalidInput(f"unknown role(s) {bad} for tenant {name!r}", field="roles")
            principal = Principal(name, roles, bool(entry.get("all_lists", False)))
            for digest in entry.get("tokens_sha256", []):
                digest = digest.strip().lower()
                if len(digest) != 64:
                    raise InvalidInput(f"tenant {name!r}: not a SHA-256 hex digest", field="tokens")
                by_digest[digest] = principal
        return cls(by_digest)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        with open(path, "rb") as fh:
            return cls.from_mapping(tomllib.load(fh))

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
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        # A dict lookup on the SHA-256 of the token: timing can reveal at most which
        # digest prefix was probed, which says nothing useful about any token.
        found = self._by_digest.get(hash_token(token.strip()))
        if found is None:
            raise Unauthenticated("unknown or revoked token")
        return found


def tenant_entry(name: str, token: str, roles: Iterable[str], *, all_lists: bool = False) -> str:
    """TOML text for one tenant holding ``token`` (stored hashed)."""
    role_list = ", ".join(f'"{r}"' for r in roles)
    return (
        f"[tenants.{name}]\n"
        f'tokens_sha256 = ["{hash_token(token)}"]\n'
        f"roles = [{role_list}]\n"
        f"all_lists = {'true' if all_lists else 'false'}\n"
    )


def bootstrap_admin(auth_path: Path) -> str | None:
    """First start with no tokens file: create one holding a fresh admin token.

    Returns the token (shown once by ``hashmatch serve`` and written to
    ``admin.token`` beside the file, mode 0600) or None when the file exists.
    """
    if auth_path.exists():
        return None
    auth_path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    header = "# hashmatch tokens (SHA-256 digests only). Add tenants with `hashmatch token`.\n\n"
    auth_path.write_text(header + tenant_entry("admin", token, ROLES, all_lists=True))
    token_file = auth_path.parent / "admin.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token
