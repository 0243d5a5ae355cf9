"""The contract every Hamming index in hashmatch honours.

INTERFACE OWNED BY THE INDEX WORK (issue 7); other layers code against this.

- Codes are packed ``uint8[n, bits // 8]`` (see ``hashmatch.engine.signal_types``).
- ids are caller-chosen stable ``int64``.
- ``search_radius(queries, radius)`` is INCLUSIVE: every live code with
  distance <= radius, none beyond. Result in FAISS's CSR form:
  ``lims int64[nq + 1]``, ``distances int32[lims[-1]]``, ``ids int64[lims[-1]]``;
  query i's hits are ``ids[lims[i]:lims[i + 1]]`` (order within a query unspecified).
- ``remove`` takes effect on the next lookup (tombstones); readers never see a
  half-applied change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

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
