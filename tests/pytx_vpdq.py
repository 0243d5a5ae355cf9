"""python-threatexchange's vPDQ modules, for tests that use them as the oracle."""

from __future__ import annotations

import sys
import types


def threatexchange_vpdq() -> tuple[types.ModuleType, types.ModuleType]:
    """``(vpdq_util, vpdq_brute_matcher)``. They import the vpdq extension (Meta's C++
    file hasher, no wheel for this platform) at the top, for hashing files only: a
    placeholder stands in when it is absent, matching and (de)serialising are theirs.
    (A test that skipped without the extension never ran: CI has no vpdq.)"""
    try:
        import vpdq  # noqa: F401
    except ImportError:
        sys.modules["vpdq"] = types.SimpleNamespace(VpdqFeature=object)  # type: ignore[assignment]
    from threatexchange.extensions.vpdq import vpdq_brute_matcher, vpdq_util

    return vpdq_util, vpdq_brute_matcher
