"""What a first ``hashmatch serve`` creates before its port opens, undone when the
start fails there.

Why: a first start on a port in use exited 1, but left the data dir, an auth.toml and
an admin.token behind (the token never shown on a terminal: its announcement came
before the failure). The next start, on a free port, found the tokens file, made no
token and printed none; the operator had to know to read admin.token, or delete the
directory by hand."""

from __future__ import annotations

from pathlib import Path

from hashmatch.server.auth import admin_token_path, hash_token


class FirstStartFiles:
    """The tokens file, admin.token and the directories a start is about to create.

    Built before :func:`~hashmatch.server.auth.bootstrap_admin`; told the token it
    made (:meth:`made`); :meth:`undo` removes only what this start made and nobody
    changed since (a file holding other tokens, a directory with other files: kept)."""

    def __init__(self, auth_path: Path):
        self.auth_path = auth_path
        self.token: str | None = None
        self.new_dirs: list[Path] = []  # deepest first
        for parent in (auth_path.parent, *auth_path.parent.parents):
            if parent.exists():
                break
            self.new_dirs.append(parent)

    def made(self, token: str | None) -> None:
        """The admin token bootstrap_admin created (None: the tokens file was there)."""
        self.token = token

    def undo(self) -> list[Path]:
        """Remove this start's files and directories; the paths removed."""
        removed: list[Path] = []
        if self.token is None:
            return removed  # this start made no tokens file: nor (then) its directory
        token_file = admin_token_path(self.auth_path)
        if _read(token_file) == self.token + "\n":
            token_file.unlink()
            removed.append(token_file)
        text = _read(self.auth_path) or ""
        if text.count("tokens_sha256") == 1 and hash_token(self.token) in text:
            self.auth_path.unlink()  # still only the admin this start made
            removed.append(self.auth_path)
        for directory in self.new_dirs:
            try:
                directory.rmdir()  # only when empty
            except OSError:
                break
            removed.append(directory)
        return removed


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
