"""The contract every Hamming index in hashmatch honours, and its input checks.

INTERFACE OWNED BY THE INDEX WORK (issue 7); other layers code against this.

- Codes are packed ``uint8[n, bits // 8]`` (see ``hashmatch.engine.signal_types``).
- ids are caller-chosen stable ``int64``; adding an id that is already live
  replaces its code (upsert), a batch may not repeat an id.
- ``search_radius(queries, radius)`` is INCLUSIVE: every live code with
  distance <= radius, none beyond. Result in FAISS's CSR form:
  ``lims int64[nq + 1]``, ``distances int32[lims[-1]]``, ``ids int64[lims[-1]]``;
  query i's hits are ``ids[lims[i]:lims[i + 1]]`` (order within a query unspecified).
- ``search_knn(queries, k)`` -> ``(distances int32[nq, k], ids int64[nq, k])``,
  nearest first, -1 where fewer than k live codes exist; nq * k is capped at
  ``MAX_KNN_RESULTS`` (InvalidK beyond it).
- ids are >= 0 (InvalidIds otherwise): -1 is knn's "no code".
- ``remove`` takes effect on the next lookup (tombstones); readers never see a
  half-applied change. Unknown ids raise NotFound (nothing is removed) unless
  ``missing_ok=True``.
- ``save(path)`` writes a snapshot directory; ``hashmatch.indexes.load_index``
  reads it back (memory-mapped) or raises CorruptData.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hashmatch.engine.errors import InvalidInput, InvalidThreshold

RadiusResult = tuple[np.ndarray, np.ndarray, np.ndarray]  # (lims, distances, ids)
KnnResult = tuple[np.ndarray, np.ndarray]  # (distances int32[nq, k], ids int64[nq, k]; -1 = none)


@runtime_checkable
class HammingIndex(Protocol):
    bits: int

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search_radius(self, queries: np.ndarray, radius: int) -> RadiusResult: ...

    def search_knn(self, queries: np.ndarray, k: int) -> KnnResult: ...

    def __len__(self) -> int: ...

    def save(self, path: Path) -> None: ...


class InvalidCodes(InvalidInput):
    """Codes of the wrong dtype, shape or width for this index."""


class InvalidIds(InvalidInput):
    """ids that are not 1-D integers matching the codes (or repeat within a batch)."""


class InvalidRadius(InvalidThreshold):
    """A radius below 0, above the code width, or non-zero for an exact-bytes index."""


class InvalidK(InvalidInput):
    """A k for knn search that is not a positive integer."""


class UnknownIndexKind(InvalidInput):
    """An index kind name make_index does not know."""


def check_codes(codes: object, bits: int, field: str = "codes") -> np.ndarray:
    """uint8[n, bits/8] C-contiguous, or InvalidCodes naming what is wrong."""
    if not isinstance(codes, np.ndarray):
        raise InvalidCodes(f"expected a numpy uint8 array, got {type(codes).__name__}", field=field)
    if codes.dtype != np.uint8:
        raise InvalidCodes(f"expected dtype uint8, got {codes.dtype}", field=field)
    nbytes = bits // 8
    if codes.ndim == 1 and codes.shape[0] == nbytes:
        codes = codes[None, :]
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise InvalidCodes(
            f"expected shape (n, {nbytes}) for {bits}-bit codes, got {codes.shape}", field=field
        )
    return np.ascontiguousarray(codes)


def check_ids(
    ids: object, n: int, field: str = "ids", *, allow_negative: bool = False
) -> np.ndarray:
    """int64[n], or InvalidIds naming what is wrong.

    ids are >= 0: knn results use -1 for "no code", so a stored negative id would
    be indistinguishable from an empty slot. ``allow_negative`` is for lookups
    (remove), where a negative id is simply never live.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InvalidIds(f"expected 1-D integer ids, got {arr.dtype} {arr.shape}", field=field)
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidIds("ids must fit in int64", field=field)
    if len(arr) != n:
        raise InvalidIds(f"{len(arr)} ids for {n} codes", field=field)
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if not allow_negative and arr.size and int(arr.min()) < 0:
        first = int(np.argmax(arr < 0))
        raise InvalidIds(
            f"id {int(arr[first])} is negative (ids must be >= 0)", field=field, index=first
        )
    return arr


def check_radius(radius: object, bits: int, *, exact_only: bool = False) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer):
        raise InvalidRadius(f"expected an integer radius, got {radius!r}", field="radius")
    r = int(radius)
    if r < 0 or r > bits:
        raise InvalidRadius(f"must be in 0..{bits}, got {r}", field="radius")
    if exact_only and r != 0:
        raise InvalidRadius(f"an exact-bytes index only answers radius 0, got {r}", field="radius")
    return r


MAX_KNN_RESULTS = 1 << 24  # nq * k slots one knn call may return (~200 MB of output)


def check_k(k: object, nq: int = 1) -> int:
    """A positive k whose (nq, k) result fits MAX_KNN_RESULTS, or InvalidK.

    The result is always (nq, k), -1 padded past the live codes, so an absurd k
    would allocate nq * k slots before any search: refused up front instead.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) <= 0:
        raise InvalidK(f"expected a positive integer, got {k!r}", field="k")
    k = int(k)
    if nq * k > MAX_KNN_RESULTS:
        raise InvalidK(
            f"{k} nearest for {nq} queries is {nq * k} result slots, more than "
            f"{MAX_KNN_RESULTS} per call (ask for fewer, or split the batch)",
            field="k",
        )
    return k


def empty_radius_result(nq: int) -> RadiusResult:
    return np.zeros(nq + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
