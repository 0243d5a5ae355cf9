"""trim_borders: borders, bars and blurred padding come off; real photos stay whole."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import skimage.data
from conftest import PROJECT_ROOT
from hypothesis import given, settings
from hypothesis import strategies as hst

from hashmatch.engine.multihash import pdq_crop_codes, pdq_query_codes
from hashmatch.engine.pdq import pdq_hash
from hashmatch.engine.trim import border_box, border_boxes, trim_borders, trim_candidates


def _load_transforms():
    """bench/transforms.py (the benchmark's edits; bench/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_transforms", PROJECT_ROOT / "bench" / "transforms.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tf = _load_transforms()
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "clock")
RNG = np.random.default_rng(0)


def _photo(name: str) -> np.ndarray:
    im = getattr(skimage.data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    return np.ascontiguousarray(im[..., :3])


def _dist(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def _close(box, expected, tol: float) -> bool:
    return all(abs(b - e) <= tol for b, e in zip(box, expected, strict=True))


@pytest.mark.parametrize("name", PHOTOS)
def test_plain_photo_is_returned_unchanged(name):
    # Cameraman's smooth sky, the moon's black space, the clock's plain wall: no border.
    im = _photo(name)
    assert trim_borders(im) is im
    assert border_box(im) == (0, im.shape[0], 0, im.shape[1])


@pytest.mark.parametrize("name", ("astronaut", "coffee", "camera"))
@pytest.mark.parametrize("kind", ("solid", "blurred"))
def test_padding_is_cut_back_to_the_picture(name, kind):
    im = _photo(name)
    h, w = im.shape[:2]
    pad = (tf.pad_solid if kind == "solid" else tf.pad_blurred)(0.2)
    padded = pad(im, RNG)
    ph, pw = round(h * 0.1), round(w * 0.1)
    box = border_box(padded)
    assert _close(box, (ph, ph + h, pw, pw + w), tol=0.025 * max(h, w)), box
    # and the trimmed copy hashes back to the original; untrimmed it does not
    original = pdq_hash(im)[0]
    assert _dist(pdq_hash(trim_borders(padded))[0], original) <= 31
    assert _dist(pdq_hash(padded)[0], original) > 31


def test_letterbox_bars_and_screenshot_frame_are_cut():
    im = _photo("chelsea")  # landscape
    h, w = im.shape[:2]
    boxed = tf.letterbox(im, RNG)
    bar = (boxed.shape[0] - h) // 2
    assert _close(border_box(boxed), (bar, bar + h, 0, w), tol=3)
    # pillarbox (portrait picture in a landscape frame)
    portrait = np.ascontiguousarray(im[:, :200])
    boxed = tf.letterbox(portrait, RNG)
    bar = (boxed.shape[1] - 200) // 2
    assert _close(border_box(boxed), (0, h, bar, bar + 200), tol=3)
    # a screenshot: status bar + toolbar with icons + page margins around the picture
    shot = tf.screenshot(_photo("astronaut"), RNG)
    trimmed = trim_borders(shot)
    assert abs(trimmed.shape[0] - 410) <= 8 and abs(trimmed.shape[1] - 410) <= 8, trimmed.shape


@settings(max_examples=15, deadline=None)
@given(
    top=hst.integers(0, 60),
    bottom=hst.integers(0, 60),
    left=hst.integers(0, 60),
    right=hst.integers(0, 60),
    grey=hst.integers(0, 255),
)
def test_any_solid_border_widths(top, bottom, left, right, grey):
    im = _photo("astronaut")[::2, ::2]  # 256 x 256
    framed = np.pad(im, ((top, bottom), (left, right), (0, 0)), constant_values=grey)
    h, w = framed.shape[:2]
    box = border_box(framed)
    # never inside the picture by more than 2 detection pixels, never leaving > 3 px of border
    expected = (top, h - bottom, left, w - right)
    assert _close(box, expected, tol=4), (box, expected)


def test_small_and_grey_inputs_are_left_alone():
    tiny = np.zeros((10, 12, 3), np.uint8)
    assert trim_borders(tiny) is tiny
    flat = np.full((100, 80, 3), 128, np.uint8)  # all border: nothing sensible to keep
    assert trim_borders(flat) is flat


def test_query_codes_add_the_trimmed_variants_only_when_trimming_changed_something():
    im = _photo("coffee")
    codes, qualities = pdq_query_codes(im)
    assert codes.shape == (8, 32) and len(qualities) == 8  # nothing trimmed: dihedral only
    padded = tf.pad_solid(0.2)(im, RNG)
    codes, _ = pdq_query_codes(padded)
    assert codes.shape == (16, 32)
    original = pdq_hash(im)[0]
    assert min(_dist(c, original) for c in codes[8:]) <= 31
    assert pdq_query_codes(padded, dihedral=False, trim=False)[0].shape == (1, 32)


def test_crop_codes_bring_a_centred_crop_within_threshold():
    im = _photo("astronaut")
    stored = pdq_crop_codes(im, keep=(0.9, 0.8))[0]
    cropped = im[26:486, 26:486]  # 90% centred
    q = pdq_hash(cropped)[0]
    assert min(_dist(q, c) for c in stored) <= 10
    with pytest.raises(ValueError, match=r"keep share must be in \(0, 1\], got 1.5"):
        pdq_crop_codes(im, keep=(1.5,))


def test_letterboxed_picture_with_its_own_caption_strip_keeps_the_strip_in_a_candidate():
    # The picture itself ends in a flat grey caption strip; letterbox bars around it.
    # The best guess cuts the strip as a nested band; the outer-bands-only candidate
    # keeps it, and that is the one that hashes like the original.
    im = _photo("chelsea").copy()
    h, w = im.shape[:2]
    im[h - h // 8 :] = 128
    boxed = np.pad(im, ((60, 60), (0, 0), (0, 0)))  # black bars, top and bottom
    boxes = border_boxes(boxed)
    assert len(boxes) == 2
    assert _close(boxes[1], (60, 60 + h, 0, w), tol=3), boxes
    assert boxes[0][1] < 60 + h - h // 8 + 3  # the strip went too
    original = pdq_hash(im)[0]
    dists = [_dist(pdq_hash(c)[0], original) for c in trim_candidates(boxed)]
    assert dists[0] > 31 and dists[1] <= 31, dists
    # a plain padded photo has one candidate only
    assert len(border_boxes(tf.pad_solid(0.2)(_photo("coffee"), RNG))) == 1


@pytest.mark.parametrize("width", (200, 360))
@pytest.mark.parametrize("name", ("astronaut", "coffee", "chelsea"))
def test_blurred_padding_is_cut_at_the_paste_seam_not_inside_the_picture(name, width):
    """The cut lands on the paste seam, not a line inside (200 px: detected at full
    size; 360 px: on a 256 px copy). A line or two too many on each side of a small
    picture is a 1-2% crop per side, which moved PDQ 30+ bits on some bench photos."""
    import cv2

    im = _photo(name)
    h0, w0 = im.shape[:2]
    im = cv2.resize(im, (width, round(h0 * width / w0)), interpolation=cv2.INTER_AREA)
    h, w = im.shape[:2]
    padded = tf.pad_blurred(0.2)(im, RNG)
    ph, pw = round(h * 0.1), round(w * 0.1)
    assert border_box(padded) == (ph, ph + h, pw, pw + w)
