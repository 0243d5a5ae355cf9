"""Protobuf <-> engine values, with the request validation that names fields.

Kept apart from the servicers so the parsing rules (which field, which index)
are in one place and testable without a socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.errors import InvalidHash, InvalidInput
from hashmatch.server.violations import Violations
from hashmatch.v1 import common_pb2

if TYPE_CHECKING:
    from hashmatch.engine.hashing import HashResult
    from hashmatch.engine.matcher import Match


@dataclass
class ParsedHashes:
    """Hash queries grouped by type: rows of ``codes`` answer ``positions`` of the request."""

    by_type: dict[str, tuple[np.ndarray, list[int], list[int | None]]]  # codes, positions, quality


def signal_type(name: str, field: str) -> signal_types.SignalType:
    if not name:
        raise InvalidInput("signal_type is required", field=field)
    try:
        return signal_types.get(name, field=field)
    except InvalidInput as exc:
        raise type(exc)(exc.message, field=field) from None


def parse_hash(value: common_pb2.HashValue, field: str) -> tuple[str, np.ndarray]:
    st = signal_type(value.signal_type, f"{field}.signal_type")
    which = value.WhichOneof("value")
    if which == "hex":
        return st.name, st.parse(value.hex, field=f"{field}.hex")
    if which == "raw":
        return st.name, st.parse(value.raw, field=f"{field}.raw")
    raise InvalidHash("a hash needs hex or raw bytes", field=field)


def parse_hashes(
    values: Sequence[common_pb2.HashValue], field: str = "hashes", found: Violations | None = None
) -> ParsedHashes:
    """The hashes that parse, grouped by type. Each bad one (type, hex/raw, quality) is
    noted in ``found`` and left out; without ``found`` they are raised together."""
    own = found is None
    found = Violations() if found is None else found
    groups: dict[str, tuple[list[np.ndarray], list[int], list[int | None]]] = {}
    for i, value in enumerate(values):
        parsed = found.attempt(parse_hash, value, f"{field}[{i}]")
        quality = value.quality if value.HasField("quality") else None
        if quality is not None and not 0 <= quality <= 100:
            found.add(
                InvalidInput(
                    f"quality must be 0..100, got {quality}", field=f"{field}[{i}].quality"
                )
            )
            continue
        if parsed is None:
            continue
        name, code = parsed
        codes, positions, qualities = groups.setdefault(name, ([], [], []))
        codes.append(code)
        positions.append(i)
        qualities.append(quality)
    if own:
        found.raise_any()
    return ParsedHashes({name: (_rows(c), p, q) for name, (c, p, q) in groups.items()})


def _rows(codes: list[np.ndarray]) -> np.ndarray:
    return codes[0][None, :] if len(codes) == 1 else np.stack(codes)


def parse_frames(
    frames: Sequence[str], qualities: Sequence[int], field: str, qualities_name: str = "qualities"
) -> np.ndarray:
    """vPDQ frames (one PDQ hex each) -> ``uint8[k, 32]``; qualities: none or one per frame,
    each 0..100 (``qualities_name``: the message's field for them). Bad frames are
    raised together (:class:`~hashmatch.server.violations.InvalidRequest`)."""
    st = signal_types.get("vpdq")
    if not frames:
        raise InvalidInput("a video needs at least one frame", field=f"{field}.frames")
    signal_types.check_frame_extras(
        len(frames), qualities, None, field=field, qualities_name=qualities_name
    )
    out = np.empty((len(frames), st.nbytes), np.uint8)
    found = Violations()  # every bad frame, not just the first
    for j, value in enumerate(frames):
        code = found.attempt(st.parse, value, field=f"{field}.frames[{j}]")
        if code is not None:
            out[j] = code
    found.raise_any()
    return out


def threshold_for(type_name: str, threshold: int | None) -> int | None:
    """A request's ``options.threshold`` for one type (exact types always match at 0)."""
    return signal_types.get(type_name).shared_threshold(threshold, field="options.threshold")


def match_to_pb(m: Match) -> common_pb2.Match:
    """engine Match -> protobuf Match."""
    return common_pb2.Match(**_match_fields(m, int(m.query_index)))


def add_match(matches: Any, m: Match, query_index: int) -> None:
    """Append engine Match ``m`` to a repeated ``Match`` field as the match of request
    query ``query_index``. Built in place: ``extend`` with :func:`match_to_pb` made
    each message twice (then copied it in), half the reply's cost per match."""
    matches.add(**_match_fields(m, query_index))


def _match_fields(m: Match, query_index: int) -> dict[str, Any]:
    return {
        "query_index": query_index,
        "signal_id": int(m.signal_id),
        "signal_type": m.signal_type,
        "hash_hex": m.hash_hex,
        "distance": int(m.distance),
        "list_name": m.list_name,
        "labels": list(m.labels or ()),
        "external_id": m.external_id or "",
        "variant": int(getattr(m, "variant", 0) or 0),
        "query_match_pct": float(getattr(m, "query_match_pct", 0.0) or 0.0),
        "target_match_pct": float(getattr(m, "target_match_pct", 0.0) or 0.0),
    }


def computed_to_pb(result: HashResult) -> common_pb2.ComputedHash:
    """engine HashResult -> protobuf ComputedHash."""
    st = signal_types.get(result.signal_type)
    return common_pb2.ComputedHash(
        signal_type=result.signal_type,
        hex=st.format_many(result.codes),
        qualities=[int(q) for q in result.qualities],
        timestamps=[float(t) for t in result.timestamps],
    )
