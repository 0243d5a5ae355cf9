"""Our PDQ against the pdqhash oracle: same bits, same quality, same dihedral hashes.

Everything is compared bit for bit (no distance tolerance): real photos, every image
scikit-image ships, synthetic chessboards and flat images whose DCT coefficients tie at
the median, and random resizes down to 1x1.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pdqhash
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashmatch.engine.decode import decode_image
from hashmatch.engine.pdq import pdq_float, pdq_hash, pdq_hash_dihedral, reference_downsize


@lru_cache(maxsize=16)
def _decoded(path: Path) -> np.ndarray:
    """Decode each reference file once for the whole module (the 12 MP JPEGs are slow)."""
    rgb = decode_image(path)
    rgb.setflags(write=False)
    return rgb


def _oracle(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(np.asarray(bits, np.uint8)), int(quality)


def _oracle_dihedral(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(rgb))
    return np.stack([np.packbits(np.asarray(h, np.uint8)) for h in hashes]), int(quality)


def _assert_same(rgb: np.ndarray, label: str, dihedral: bool = True) -> None:
    code, quality = pdq_hash(rgb)
    want, want_q = _oracle(rgb)
    assert code.dtype == np.uint8 and code.shape == (32,)
    assert code.tobytes().hex() == want.tobytes().hex(), f"{label}: hash differs"
    assert quality == want_q, f"{label}: quality {quality} != {want_q}"
    if dihedral:
        codes, dq = pdq_hash_dihedral(rgb)
        want8, want8_q = _oracle_dihedral(rgb)
        assert codes.shape == (8, 32)
        for n in range(8):
            assert codes[n].tobytes() == want8[n].tobytes(), f"{label}: dihedral {n} differs"
        assert dq == want8_q


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


# Images bundled with scikit-image (no download needed).
_SKIMAGE = [
    "astronaut",
    "binary_blobs",
    "brick",
    "camera",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
]


def _skimage(name: str) -> np.ndarray | None:
    try:
        return _rgb(getattr(skimage.data, name)())
    except Exception:  # an image that needs a network download on this install
        return None


@pytest.mark.parametrize("name", _SKIMAGE)
def test_skimage_images_match_pdqhash(name):
    rgb = _skimage(name)
    if rgb is None:
        pytest.skip(f"skimage.data.{name} is not bundled here")
    _assert_same(rgb, name)


def _chessboard(h: int, w: int, cells: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    board = (((y * cells) // h + (x * cells) // w) % 2 * 255).astype(np.uint8)
    return _rgb(board)


@pytest.mark.parametrize("kernel", ["_luma_row_simd", "_luma_row_generic"])
def test_luma_is_the_bindings_float64_formula_for_every_rgb_triple(kernel):
    """Each luma kernel (the vector one, SSE2 integer key on x86-64; plain numba) equals
    float32(R*0.299 + G*0.587 + B*0.114) computed in float64 (what the pdqhash bindings
    feed C++) for all 2**24 colours."""
    from hashmatch.engine import pdq_kernels

    row_kernel = getattr(pdq_kernels, kernel)
    g, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    g, b = g.ravel().astype(np.float64), b.ravel().astype(np.float64)
    rgb = np.empty((256, 65536, 3), np.uint8)
    rgb[:, :, 0] = np.arange(256, dtype=np.uint8)[:, None]
    rgb[:, :, 1] = g.astype(np.uint8)
    rgb[:, :, 2] = b.astype(np.uint8)
    got = np.empty((256, 65536), np.float32)
    for r in range(256):
        row_kernel(rgb[r].reshape(-1), got[r])
    for r in range(256):
        want = ((r * 0.299 + g * 0.587) + b * 0.114).astype(np.float32)
        assert np.array_equal(got[r].view(np.uint32), want.view(np.uint32)), r


def test_float64_reciprocal_divides_exactly_like_float32_division():
    """Column pass 2 divides by multiplying with float64(1/d) (pdq_kernels._recips):
    float32(float64(x) * (1/d)) must be the correctly rounded x / d for every window
    length d and any normal float32 x. Checked on 100k floats over 60 binades (plus
    exact multiples of d, where the quotient is representable) for d = 1..1024 and a
    few window lengths only huge images have."""
    from hashmatch.engine.pdq_kernels import _recips

    rng = np.random.default_rng(3)
    mantissas = rng.integers(1 << 23, 1 << 24, 100_000)
    x = (mantissas * np.exp2(rng.integers(-82, -22, mantissas.size))).astype(np.float32)
    x[::2] = -x[::2]
    d = np.concatenate([np.arange(1, 1025), [4095, 65535, 781250]]).astype(np.float32)
    rec = _recips(d)
    for k in range(d.size):
        got = (x.astype(np.float64) * rec[k]).astype(np.float32)
        want = x / d[k]
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), float(d[k])
        exact = (x[:1000] * d[k]).astype(np.float32)
        got = (exact.astype(np.float64) * rec[k]).astype(np.float32)
        assert np.array_equal(got.view(np.uint32), (exact / d[k]).view(np.uint32))


def test_fma_corrected_division_is_float32_division_for_every_mantissa():
    """Column pass 2 divides by an FMA-corrected multiply (pdq_kernels._v8_div_fma) for
    window lengths up to FMA_DIVISOR_MAX: for each such d it must give the correctly
    rounded x / d for every float32 mantissa. The binade does not matter (every step
    scales exactly by powers of two while values stay normal) and an even d = 2**k m
    behaves as m, so every odd d is checked on all 2**23 mantissas, plus small even d,
    signs, zero and the smallest and largest binades pass 2 sees."""
    from numba import njit

    from hashmatch.engine import pdq_kernels as k

    @njit(nogil=True, error_model="numpy")
    def mismatches(d, xs, out):
        y = np.float32(1.0) / d
        bad = 0
        for i in range(0, xs.shape[0], 8):
            k._v8_store(out, i, k._v8_div_fma(k._v8_load(xs, i), y, d))
        for i in range(xs.shape[0]):
            if out[i] != xs[i] / d:  # -0.0 gives +0.0: pass 2 never sees -0 (its sums
                bad += 1  # start at +0 and add luma >= 0; x - x rounds to +0)
        return bad

    mantissas = (np.arange(1 << 23, dtype=np.uint32) | np.uint32(127 << 23)).view(np.float32)
    out = np.empty_like(mantissas)
    assert k.FMA_DIVISOR_MAX >= 9  # 1080p's column window; the fallback covers the rest
    divisors = [*range(1, k.FMA_DIVISOR_MAX + 1, 2), *range(2, 33, 2), k.FMA_DIVISOR_MAX]
    for d in divisors:
        assert mismatches(np.float32(d), mantissas, out) == 0, d
    rng = np.random.default_rng(5)
    special = rng.choice(mantissas, 4096) * np.exp2(rng.integers(-82, 21, 4096))
    special = np.concatenate([special, -special, [0.0, 2.0**-82, 255.0 * 2**14]])
    special = np.resize(special.astype(np.float32), (special.size + 7) // 8 * 8)
    for d in range(1, k.FMA_DIVISOR_MAX + 1):
        assert mismatches(np.float32(d), special, np.empty_like(special)) == 0, d


@pytest.mark.parametrize(
    "shape",
    [
        (5, 9),
        (15, 33),
        (16, 40),
        (17, 41),
        (31, 63),
        (33, 7),
        (47, 300),
        (129, 5),
        (1000, 6),
        (1080, 1920),
        (32640, 6),  # the largest column window (255) with FMA-corrected division
        (32641, 6),  # window 256: float64 reciprocals instead
        (40000, 5),
    ],
)
def test_column_blocks_match_pdqhash(shape):
    """Column pass 2 runs in blocks of 16 output rows, 32 columns (or 8 at the edge) at
    a time: heights around the block size, widths around the 8- and 32-column groups,
    tall images past FMA_DIVISOR_MAX and both pixel kinds (noise, smooth)."""
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    noise = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    _assert_same(noise, f"noise {shape}", dihedral=False)
    smooth = np.ascontiguousarray(cv2.resize(_rgb(skimage.data.astronaut()), shape[::-1]))
    _assert_same(smooth, f"astronaut {shape}", dihedral=shape[0] < 2000)


@pytest.mark.parametrize("cells", [2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("shape", [(64, 64), (128, 128), (100, 160), (37, 53), (512, 512)])
def test_chessboards_tie_at_the_median_like_pdqhash(cells, shape):
    _assert_same(_chessboard(*shape, cells), f"chessboard {cells} {shape}")


@pytest.mark.parametrize(
    "rgb",
    [
        np.full((100, 120, 3), 77, np.uint8),
        np.full((64, 64, 3), 200, np.uint8),
        np.zeros((300, 200, 3), np.uint8),
        np.full((5, 5, 3), 255, np.uint8),
        np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 90, axis=0).repeat(3, 2),
        np.repeat(np.arange(200, dtype=np.uint8)[:, None, None], 70, axis=1).repeat(3, 2),
    ],
    ids=["flat", "flat64", "black", "white5x5", "hgradient", "vgradient"],
)
def test_flat_and_gradient_images(rgb):
    _assert_same(np.ascontiguousarray(rgb), "synthetic")


def test_64x64_takes_the_unfiltered_path_but_dihedral_does_not():
    """pdqhash copies a 64x64 image without blur for compute(), not compute_dihedral()."""
    rgb = np.ascontiguousarray(cv2.resize(skimage.data.astronaut(), (64, 64)))
    _assert_same(rgb, "astronaut 64x64")
    single, _ = pdq_float(rgb)
    filtered, _ = pdq_float(rgb, dihedral=True)
    assert not np.array_equal(single, filtered)


@pytest.mark.parametrize(
    "shape", [(1, 1), (2, 3), (4, 100), (100, 4), (5, 5), (6, 9), (5, 3001), (2999, 7), (1, 640)]
)
def test_tiny_images(shape):
    rgb = np.random.default_rng(3).integers(0, 256, (*shape, 3), dtype=np.uint8)
    _assert_same(rgb, f"tiny {shape}")
    if min(shape) < 5:
        code, quality = pdq_hash(rgb)
        assert not code.any() and quality == 0


_BASES = {
    "astronaut": _rgb(skimage.data.astronaut()),
    "camera": _rgb(skimage.data.camera()),
    "checkerboard": _rgb(skimage.data.checkerboard()),
    "chess8": _chessboard(256, 256, 8),
}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    base=st.sampled_from(sorted(_BASES)),
    h=st.one_of(st.integers(1, 70), st.integers(1, 700), st.sampled_from([63, 64, 65, 127])),
    w=st.one_of(st.integers(1, 70), st.integers(1, 700), st.sampled_from([63, 64, 65, 129])),
    interp=st.sampled_from([cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA]),
)
def test_random_resizes_match_pdqhash(base, h, w, interp):
    rgb = np.ascontiguousarray(cv2.resize(_BASES[base], (w, h), interpolation=interp))
    _assert_same(rgb, f"{base} {h}x{w}")


@pytest.mark.parametrize("shape", [(1500, 2100), (2001, 1337)])
def test_large_resizes_match_pdqhash(shape):
    rgb = np.ascontiguousarray(cv2.resize(_BASES["astronaut"], shape[::-1]))
    _assert_same(rgb, f"astronaut {shape}", dihedral=False)


def _reference_images(reference_dir: Path) -> list[Path]:
    root = reference_dir / "pdq-images"
    paths = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() not in {".md", ".dat"}
    ]
    assert len(paths) >= 45
    return paths


def test_every_reference_image_matches_pdqhash(reference_dir: Path):
    for n, path in enumerate(_reference_images(reference_dir)):
        rgb = _decoded(path)
        # The dihedral oracle on every third image (and never the 12 MP EXIF photos)
        # keeps this test a few seconds; dihedrals get their own tests above and below.
        small = rgb.shape[0] * rgb.shape[1] < 4_000_000
        _assert_same(rgb, path.name, dihedral=small and n % 3 == 0)


def test_reference_dihedral_folder(reference_dir: Path):
    """The 8 stored orientations of one photo: each one's hash is a dihedral of the first."""
    folder = reference_dir / "pdq-images" / "reg-test-input" / "dih"
    paths = sorted(folder.glob("*.jpg"))
    assert len(paths) == 8
    variants, _ = pdq_hash_dihedral(_decoded(paths[0]))
    for n, path in enumerate(paths):
        code, _ = pdq_hash(_decoded(path))
        distance = int(np.unpackbits(code ^ variants[n]).sum())
        assert distance <= 16, f"{path.name}: {distance} bits from dihedral variant {n}"


def test_exif_rotated_photos_hash_as_upright(reference_dir: Path):
    """Decoding applies EXIF orientation: the hash is the right dihedral of the stored one."""
    from PIL import Image

    folder = reference_dir / "pdq-images" / "reg-test-input" / "exif-rotn"
    # EXIF tag -> pdqhash.compute_dihedral index of the upright picture's hash.
    expected = {1: 0, 3: 2, 6: 3, 8: 1}
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as im:
            tag = im.getexif().get(0x0112, 1)
            stored = np.asarray(im.convert("RGB"))
        variants, _ = pdq_hash_dihedral(stored)
        code, _ = pdq_hash(_decoded(path))
        distance = int(np.unpackbits(code ^ variants[expected[tag]]).sum())
        assert distance <= 4, f"{path.name} (orientation {tag}): {distance} bits"


def test_hex_matches_python_threatexchange(reference_dir: Path):
    from threatexchange.signal_type.pdq.pdq_hasher import pdq_from_file

    path = reference_dir / "pdq-images" / "bridge-mods" / "aaa-orig.jpg"
    hex_, quality = pdq_from_file(path)
    code, ours_q = pdq_hash(_decoded(path))
    assert code.tobytes().hex() == hex_ and ours_q == quality


def test_reference_resize_reproduces_the_reference_cli(reference_dir: Path):
    """PDQMD5TestData.csv was made by the C++/wasm CLI (CImg nearest resize to 512x512)."""
    with open(reference_dir / "pdq-hashes" / "PDQMD5TestData.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    distances = {}
    for row in rows:
        if "/data/" not in row["FilePath"]:
            continue  # the video MD5 lines
        path = reference_dir / "pdq-images" / row["FilePath"].split("/data/")[1]
        if not path.exists():
            continue
        code, _ = pdq_hash(_decoded(path), reference_resize=True)
        want = np.frombuffer(bytes.fromhex(row["Hash"]), np.uint8)
        distances[path.name] = int(np.unpackbits(code ^ want).sum())
    assert len(distances) == 15
    exact = sum(d == 0 for d in distances.values())
    assert exact >= len(distances) - 1, distances  # measured: all but sharpen-a-lot (2 bits)
    assert max(distances.values()) <= 4, distances


def test_reference_downsize_rule():
    rgb = np.random.default_rng(0).integers(0, 256, (1004, 1600, 3), dtype=np.uint8)
    small = reference_downsize(rgb)
    assert small.shape == (512, 512, 3)
    assert (small[1, 1] == rgb[(1 * 1004) // 512, (1 * 1600) // 512]).all()
    untouched = rgb[:512, :300]
    assert reference_downsize(untouched) is untouched
    assert reference_downsize(rgb[:100, :600]).shape == (512, 512, 3)


def test_grey_and_rgba_inputs_are_accepted_and_bad_ones_rejected():
    rgb = _BASES["camera"]
    grey = np.ascontiguousarray(rgb[:, :, 0])
    assert pdq_hash(grey)[0].tobytes() == pdq_hash(rgb)[0].tobytes()
    rgba = np.concatenate([rgb, np.zeros((*rgb.shape[:2], 1), np.uint8)], axis=2)
    assert pdq_hash(rgba)[0].tobytes() == pdq_hash(rgb)[0].tobytes()
    strided = rgb[::2, ::3]
    assert pdq_hash(strided)[0].tobytes() == _oracle(np.ascontiguousarray(strided))[0].tobytes()
    with pytest.raises(ValueError, match="uint8"):
        pdq_hash(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        pdq_hash(np.zeros((10, 10, 2), np.uint8))


def test_grey_luma_is_the_grey_value_in_every_luma_kernel():
    """The premise of hashing a luma plane directly: R = G = B = x has luma exactly x."""
    from hashmatch.engine import pdq_kernels

    grey = np.repeat(np.arange(256, dtype=np.uint8), 3)
    for kernel in (pdq_kernels._luma_row_simd, pdq_kernels._luma_row_generic):
        got = np.empty(256, np.float32)
        kernel(grey, got)
        assert np.array_equal(got.view(np.uint32), np.arange(256, dtype=np.float32).view(np.uint32))


def _assert_grey_entry_same(grey: np.ndarray) -> None:
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    code, quality = pdq_hash(grey)
    want, want_q = pdq_hash(rgb)
    assert code.tobytes() == want.tobytes() and quality == want_q, grey.shape
    if min(grey.shape) >= 5:
        for dihedral in (False, True):
            dct, q = pdq_float(grey, dihedral=dihedral)
            want_dct, want_q = pdq_float(rgb, dihedral=dihedral)
            assert np.array_equal(dct.view(np.uint32), want_dct.view(np.uint32)) and q == want_q
        codes, q = pdq_hash_dihedral(grey)
        want_codes, want_q = pdq_hash_dihedral(rgb)
        assert codes.tobytes() == want_codes.tobytes() and q == want_q


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["noise", "flat", "chess", "photo"]),
)
def test_grey_plane_hashes_like_r_eq_g_eq_b(h, w, seed, kind):
    """A uint8[h, w] image goes through the luma-plane kernels (no RGB copy): every bit
    of the code, the quality and the float DCT equal those of the same plane repeated
    to RGB (which test_skimage_images_match_pdqhash & co. tie to pdqhash)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind == "flat":
        grey = np.full((h, w), rng.integers(0, 256), np.uint8)
    elif kind == "chess":
        grey = _chessboard(h, w, int(rng.integers(1, 9)))[:, :, 0]
    else:
        cam = _BASES["camera"]
        grey = np.ascontiguousarray(cv2.resize(cam[:, :, 0], (w, h), interpolation=cv2.INTER_AREA))
    _assert_grey_entry_same(grey)


@pytest.mark.parametrize("shape", [(64, 64), (1080, 1920), (1920, 1080), (16, 1000), (1001, 17)])
def test_grey_plane_large_and_special_shapes(shape):
    rng = np.random.default_rng(shape[0])
    base = cv2.resize(_BASES["camera"][:, :, 0], shape[::-1], interpolation=cv2.INTER_CUBIC)
    noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, shape), 0, 255).astype(np.uint8)
    _assert_grey_entry_same(noisy)
    rgb = np.repeat(noisy[:, :, None], 3, axis=2)
    assert pdq_hash(noisy)[0].tobytes() == _oracle(rgb)[0].tobytes()
