"""A list's signals in a comparable form: what export and format tests compare."""

from __future__ import annotations

from collections.abc import Collection

from hashmatch.engine.runtime import Engine

#: The fields beside type and hash a format may or may not carry.
FIELDS = ("labels", "external_id", "quality", "expires_at")


def list_state(engine: Engine, list_name: str, carries: Collection[str] = FIELDS) -> list[tuple]:
    """A list's signals as sorted tuples (ids and times aside): type, hash, the FIELDS
    (each one not in ``carries`` None: a format that drops it), vPDQ frames."""
    out = []
    for info in engine.store.iter_signals(list_name):
        frames = None
        if info.signal_type == "vpdq":
            codes, qualities, stamps = engine.store.frames(info.id)
            frames = (codes.tobytes(), tuple(qualities), tuple(stamps))
        row = {
            "labels": tuple(sorted(info.labels)),
            "external_id": info.external_id,
            "quality": info.quality,
            "expires_at": info.expires_at,
        }
        kept = tuple(row[k] if k in carries else None for k in FIELDS)
        out.append((info.signal_type, info.hash_hex, *kept, frames))
    return sorted(out, key=repr)
