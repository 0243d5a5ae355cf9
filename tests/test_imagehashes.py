"""pHash/dHash/aHash/wHash give exactly imagehash's bits (the oracle) on the same image."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hashmatch.engine import resample
from hashmatch.engine.decode import decode_image
from hashmatch.engine.imagehashes import IMAGEHASH_TYPES, imagehash_codes

ORACLE = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def oracle_hex(image: Image.Image, name: str) -> str:
    return str(ORACLE[name](image))


def assert_same(rgb: np.ndarray, label: str = "", types=IMAGEHASH_TYPES) -> None:
    ours = imagehash_codes(rgb)
    pil = Image.fromarray(rgb)
    for name in types:
        assert ours[name].dtype == np.uint8 and ours[name].shape == (8,)
        assert ours[name].tobytes().hex() == oracle_hex(pil, name), f"{name} {label}"


SKIMAGE_NAMES = ("astronaut", "camera", "chelsea", "coffee", "coins", "checkerboard",
                 "horse", "logo", "moon", "page", "rocket", "text", "clock", "grass")  # fmt: skip


def _skimage_rgb() -> list[tuple[str, np.ndarray]]:
    out = []
    for name in SKIMAGE_NAMES:
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # an image that needs a download: not bundled here
            continue
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        img = img.astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(img[:, :, :3])))
    return out


SKIMAGE = _skimage_rgb()


def test_skimage_bundled_images_are_available():
    """All are bundled with the scikit-image installed (>= 8 let 6 drop unseen)."""
    missing = sorted(set(SKIMAGE_NAMES) - {name for name, _ in SKIMAGE})
    assert not missing, f"skimage.data needs a download for {missing}: pick bundled ones"


@pytest.mark.parametrize(("label", "rgb"), SKIMAGE, ids=[n for n, _ in SKIMAGE])
def test_skimage_images_match_imagehash(label, rgb):
    assert_same(rgb, label)


def test_reference_images_match_imagehash(reference_dir: Path):
    paths = sorted(
        p
        for p in (reference_dir / "pdq-images").rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and "modes" not in p.parts
    )
    assert len(paths) >= 30
    large_whash = 0
    for path in paths:
        rgb = decode_image(path)
        # imagehash.whash runs pywt on a 1024x1024 image for these 1600x1004 photos
        # (~0.3 s each): check wHash on all small images and on three large ones.
        if min(rgb.shape[:2]) <= 600 or large_whash < 3:
            large_whash += min(rgb.shape[:2]) > 600
            assert_same(rgb, str(path))
        else:
            assert_same(rgb, str(path), types=("phash", "dhash", "ahash"))


def test_pillow_image_in_another_mode_converts_like_imagehash(reference_dir: Path):
    """Given a Pillow image, we convert to L from its own mode, exactly as imagehash does."""
    modes = reference_dir / "pdq-images" / "misc-images" / "modes"
    checked = 0
    for path in sorted(p for p in modes.iterdir() if p.suffix != ".md"):
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "F", "I;16", "LAB", "HSV"):  # imagehash itself cannot
                continue
            ours = imagehash_codes(im)
            types = IMAGEHASH_TYPES if checked < 3 else ("phash", "dhash", "ahash")
            for name in types:
                assert ours[name].tobytes().hex() == oracle_hex(im, name), f"{name} {path}"
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (64, 48), (100, 37), (257, 129)])
@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_images_tie_everywhere_and_still_match(size, value):
    rgb = np.full((size[1], size[0], 3), value, np.uint8)
    assert_same(rgb, f"flat {value} {size}")


@pytest.mark.parametrize("cells", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("side", [64, 96, 256])
def test_chessboards_match(cells, side):
    """Chessboards make many block sums and DCT coefficients tie at the median."""
    idx = (np.arange(side) * cells // side) % 2
    board = ((idx[:, None] ^ idx[None, :]) * 255).astype(np.uint8)
    assert_same(np.repeat(board[:, :, None], 3, axis=2), f"chess {cells} {side}")


def test_tiny_images_below_hash_size():
    rng = np.random.default_rng(5)
    for w, h in [(1, 1), (3, 5), (7, 9), (2, 40)]:
        assert_same(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), f"{w}x{h}")


@settings(max_examples=25, deadline=None)
@given(
    w=st.integers(1, 300),
    h=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([2, 3, 256]),
)
def test_random_images_of_random_sizes(w, h, seed, levels):
    """Few grey levels (2, 3) make ties likely; 256 levels are ordinary noise."""
    rng = np.random.default_rng(seed)
    values = np.linspace(0, 255, levels).astype(np.uint8)
    rgb = values[rng.integers(0, levels, (h, w, 3))]
    assert_same(rgb, f"{w}x{h} levels={levels}")


@settings(max_examples=10, deadline=None)
@given(scale=st.floats(0.05, 1.5), which=st.integers(0, len(SKIMAGE) - 1))
def test_random_resizes_of_photos(scale, which):
    _, rgb = SKIMAGE[which]
    h, w = rgb.shape[:2]
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    assert_same(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)))


def test_only_requested_types_are_computed():
    rgb = SKIMAGE[0][1]
    assert set(imagehash_codes(rgb, ["dhash"])) == {"dhash"}


# ---- the bit-exact Pillow resampler the fast path uses


def _pillow_resize(grey: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grey, "L").resize((w, h), Image.Resampling.LANCZOS))


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(1, 400),
    h=st.integers(1, 400),
    ow=st.integers(1, 70),
    oh=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_resample_equals_pillow_on_every_path(w, h, ow, oh, seed):
    """First sight (Pillow), learned order (our kernels) and one-pass resizes."""
    rng = np.random.default_rng(seed)
    for _ in range(3):  # the second call learns the order, the third uses it
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        grey = resample.grey_from_rgb(rgb)
        assert np.array_equal(grey, np.asarray(Image.fromarray(rgb).convert("L")))
        assert np.array_equal(resample.resize_lanczos(grey, ow, oh), _pillow_resize(grey, ow, oh))
    for a, b in [(ow, h), (w, oh)]:  # one pass only: no order involved
        assert np.array_equal(resample._h_first(grey, a, b), _pillow_resize(grey, a, b))


def test_learned_orders_reproduce_pillow_for_hash_sizes():
    rng = np.random.default_rng(9)
    for w, h in [(512, 512), (640, 480), (480, 640), (1000, 300), (123, 457)]:
        for ow, oh in [(32, 32), (8, 8), (9, 8)]:
            order = resample.learn_pass_order(w, h, ow, oh)
            assert order in ("h", "v")  # our kernels, not the Pillow fallback
            grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
            ours = resample._ORDERS[order](grey, ow, oh)
            assert np.array_equal(ours, _pillow_resize(grey, ow, oh))


def test_repeated_sizes_take_the_kernel_path_and_keep_imagehash_bits():
    rng = np.random.default_rng(4)
    for i in range(4):
        smooth = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        rgb = np.asarray(Image.fromarray(smooth).resize((333, 250), Image.Resampling.BICUBIC))
        assert_same(np.ascontiguousarray(rgb), f"repeat {i}")
    assert resample._order_cache.get((333, 250, 32, 32)) in ("h", "v")
