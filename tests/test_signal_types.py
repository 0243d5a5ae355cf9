"""The registry: hex round-trips and precise errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hashmatch.engine import signal_types
from hashmatch.engine.errors import InvalidHash, InvalidThreshold, UnknownSignalType


@pytest.mark.parametrize("name", signal_types.names())
@given(data=st.data())
def test_hex_round_trip(name: str, data: st.DataObject) -> None:
    st_type = signal_types.get(name)
    raw = data.draw(st.binary(min_size=st_type.nbytes, max_size=st_type.nbytes))
    code = st_type.parse(raw.hex().upper())
    assert code.dtype == np.uint8 and code.shape == (st_type.nbytes,)
    assert st_type.format(code) == raw.hex()
    assert st_type.parse(raw).tobytes() == raw


def test_errors_name_the_problem() -> None:
    pdq = signal_types.get("PDQ")
    with pytest.raises(InvalidHash, match="64 hex characters, got 3"):
        pdq.parse("abc")
    with pytest.raises(InvalidHash, match=r"hashes\[1\]: pdq hash has a non-hex character 'z'"):
        pdq.parse_many(["0" * 64, "z" * 64])
    with pytest.raises(UnknownSignalType, match=r"unknown signal type 'tmk'.*pdq"):
        signal_types.get("tmk")
    with pytest.raises(InvalidThreshold, match=r"0\.\.63, got 64"):
        pdq.check_threshold(64)
    assert pdq.check_threshold(None) == 31
    assert signal_types.get("md5").check_threshold(0) == 0


def test_one_threshold_shared_by_several_types():
    """A scan's --threshold or a media Match's threshold covers every requested type:
    perceptual types check it, exact types match at 0 whatever was asked."""
    pdq, md5 = signal_types.get("pdq"), signal_types.get("md5")
    assert pdq.shared_threshold(None) is None and md5.shared_threshold(None) is None
    assert pdq.shared_threshold(40) == 40 and md5.shared_threshold(40) == 0
    for kind, bad in ((pdq, 64), (pdq, -1), (md5, -1), (md5, True)):
        with pytest.raises(InvalidThreshold):
            kind.shared_threshold(bad, field="options.threshold")


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("pdq", "0x" + "ab" * 32, "got 66 (drop the 0x prefix)"),
        ("md5", "ab" * 32, "got 64 (the length of a sha256 hash)"),
        ("sha256", "AB" * 16, "got 32 (the length of an md5 hash)"),
        ("phash", "ab" * 32, "got 64 (the length of a pdq hash)"),
        ("pdq", "ab" * 16, "got 32"),
    ],
)
def test_a_wrong_length_says_the_likely_mix_up(name, value, hint):
    """Lists mix MD5 and SHA-256 columns and prefix 0x: say which, not just a length."""
    with pytest.raises(InvalidHash) as caught:
        signal_types.get(name).parse(value)
    assert caught.value.message.endswith(hint)
