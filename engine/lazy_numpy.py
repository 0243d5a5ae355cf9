"""numpy on first use, for the modules every store verb imports.

Why: importing numpy costs ~110 ms (more on a loaded host), and the signal-type
registry, the store and the engine are imported by verbs that never touch an array
(``lists ls``, ``tenants``, ``tokens``, ``audit``), from scripts, cron jobs and the
test suite's subprocesses. A module writes ``np = numpy_on_first_use(globals())``
(under ``if not TYPE_CHECKING``): its first ``np.<name>`` imports numpy and rebinds
that module's ``np`` to the real one, so every later use is a plain global look-up,
as with ``import numpy as np``. Keep module-level code free of ``np.``: it would load
numpy at import again (build such constants on first use instead).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["is_numpy", "numpy_on_first_use"]


class _NumpyOnFirstUse:
    """Stands in for numpy in one module's globals until an attribute is read."""

    __slots__ = ("_namespace",)

    def __init__(self, namespace: dict[str, Any]) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        import numpy

        self._namespace["np"] = numpy
        return getattr(numpy, name)

    def __repr__(self) -> str:
        return "<numpy, imported on first use>"


def numpy_on_first_use(namespace: dict[str, Any]) -> Any:
    """A stand-in for ``np`` in ``namespace`` (a module's ``globals()``)."""
    return _NumpyOnFirstUse(namespace)


def is_numpy(value: object, kind: str) -> bool:
    """Whether ``value`` is a ``numpy.<kind>`` (``ndarray``, ``integer``, ``number``),
    without importing numpy: a value can be one only once numpy is loaded."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, getattr(numpy, kind))
