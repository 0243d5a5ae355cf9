"""Bare hex (no ``TYPE:`` prefix, no ``--type``) is read as pdq: for one of another
type's length, how to say its type. Shared by the local verbs (``match``, ``retract``,
``restore``) and the remote ones (``remote match``, ``remote retract``), so both word
the same refusal the same way."""

from __future__ import annotations

from hashmatch.engine import signal_types
from hashmatch.engine.errors import InvalidInput

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def bare_hex_hint(hex_: str) -> str:
    """For bare hex of another type's length, read as pdq since no --type was given:
    how to say its type. Why: `hashmatch match <an MD5>` said only "pdq hash must be
    64 hex characters, got 32", naming neither the pdq default nor ``md5:HEX``."""
    text = hex_.strip()
    if not text or any(c not in _HEX_DIGITS for c in text):
        return ""
    fits = sorted(t.name for t in signal_types.all_types()
                  if t.hex_length == len(text) and t.name not in ("pdq", "vpdq"))  # fmt: skip
    if not fits:
        return ""
    if len(fits) == 1:
        return f"; bare hex is read as pdq: write {fits[0]}:HEX or give --type {fits[0]}"
    named = ", ".join(fits[:-1]) + f" or {fits[-1]}"
    return f"; bare hex is read as pdq: write TYPE:HEX ({named}) or give --type"


def bare_hex_refusal(hex_: str) -> str | None:
    """Why pdq refuses ``hex_`` with :func:`bare_hex_hint`'s hint, or None when pdq
    takes it or no other type fits (then the caller's usual path words the refusal).

    Why: ``hashmatch remote match <an MD5>`` sent it as pdq and got the server's
    "pdq hash must be 64 hex characters, got 32" only; the server would refuse any
    value this returns a reason for, so the CLI can say it before sending anything."""
    pdq = signal_types.get("pdq")
    if len(hex_.strip()) == pdq.hex_length:  # sha256's too: a pdq hash, or the server's
        return None  # to refuse; and no code parsed here (numpy stays unloaded)
    hint = bare_hex_hint(hex_)
    if not hint:
        return None
    try:
        pdq.parse(hex_)
    except InvalidInput as exc:
        return exc.message + hint
    return None  # pragma: no cover - another length always fails pdq's parse
