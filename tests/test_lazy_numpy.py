"""numpy on first use (engine/lazy_numpy.py): the registry answers as before without it.

Why: store verbs import the signal-type registry, the store and the engine but handle
no codes; numpy (~110 ms) is imported when a code is first handled, and the checks that
accept numpy integers must neither import it nor change their answers.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hashmatch.engine import signal_types
from hashmatch.engine.errors import InvalidInput, InvalidThreshold

_WITHOUT_NUMPY = r"""
import sys
from hashmatch.engine import runtime, signal_types
pdq, md5 = signal_types.get("pdq"), signal_types.get("md5")
assert pdq.check_threshold(None) == 31 and pdq.check_threshold(5) == 5
assert md5.shared_threshold(7) == 0
assert pdq.format(bytes(32)) == "00" * 32
signal_types.check_frame_extras(2, [100, 0], [0, 1.5])
for bad in (True, 5.0, "5"):
    try:
        pdq.check_threshold(bad)
    except signal_types.InvalidThreshold:
        pass
    else:
        raise AssertionError(bad)
assert "numpy" not in sys.modules, "numpy imported"
code = pdq.parse("ff" * 32)  # the first code handled imports numpy
import numpy
assert type(code) is numpy.ndarray and signal_types.np is numpy  # a plain global now
assert runtime.np is not numpy and runtime.np.zeros is numpy.zeros and runtime.np is numpy
print("ok")
"""


def test_registry_checks_do_not_import_numpy_and_first_code_does():
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_NUMPY], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("value", [np.int64(7), np.uint8(7), np.int32(7), 7])
def test_numpy_integers_are_still_thresholds_and_qualities(value):
    pdq = signal_types.get("pdq")
    assert pdq.check_threshold(value) == 7
    assert signal_types.get("sha256").shared_threshold(value) == 0
    signal_types.check_frame_extras(1, [value], [np.float32(0.5)])


@pytest.mark.parametrize("value", [np.bool_(True), np.float64(7.0), True])
def test_numpy_non_integers_are_still_refused(value):
    with pytest.raises(InvalidThreshold):
        signal_types.get("pdq").check_threshold(value)
    with pytest.raises(InvalidInput):
        signal_types.check_frame_extras(1, [value], None)


def test_format_takes_arrays_and_bytes_alike():
    pdq = signal_types.get("pdq")
    code = pdq.parse("0f" * 32)
    assert (
        pdq.format(code) == pdq.format(code.tobytes()) == pdq.format(bytearray(code)) == "0f" * 32
    )
