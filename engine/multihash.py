"""Several PDQ codes per image: the query- and index-side expansions that close PDQ's
weak spots (flips, rotations, borders, crops), each measured in ``bench/quality.py``.

Why several codes rather than a "more robust" hash: the shared hash lists hold plain
PDQ of the original. A copy that was flipped, padded or cropped cannot be brought back
to the original by any single hash of it; but the *original's* PDQ can be reached by
hashing the copy the way the original looked (flip it back, cut the border off), or by
storing, next to the original, the codes of the crops an abuser is likely to make.
The matcher keeps the nearest variant per stored signal (``Match.variant``), so any
number of rows per query works with ``Engine.match`` / ``Engine.match_media``.

* :func:`pdq_query_codes` (query side): the 8 dihedral variants of the image, and the
  same for the image with its borders trimmed when trimming changed it. Rows 0..7 are
  the image as given (the ``pdq_hash_dihedral`` order), rows 8..15 the trimmed image
  (and 16..23 the outer-bands-only trim when nested bands were cut).
  Trimming only adds rows, so a wrong trim can never lose a match the plain hash had.
* :func:`uncrop_images` / :func:`pdq_uncrop_codes` (query side): the image extended by
  edge-replicated borders, as if undoing a small crop, on a grid of splits (16 rows by
  default). A 5% crop moves PDQ 50-90 bits; PDQ is dominated by low frequencies, and
  a canvas extended by replicating the edge approximates the cut-off strip well enough
  that the right split lands within 31 bits for ~60% of 5% crops (bench quality).
* :func:`derotate_images` / :func:`pdq_derotate_codes` (query side): the image turned
  back by a few small angles (+-3, +-5 degrees; edges replicated into the corners), for
  copies "straightened" or tilted by a few degrees: PDQ moves 40-60 bits at 4 degrees.
* :func:`upscaled_small` / :func:`replicated_small` / :func:`phase_shifted_small` /
  :func:`pdq_small_codes` (query side): a copy smaller than 256 px also hashed
  enlarged, bilinearly to 256 px and/or by repeating each pixel a whole number of
  times: PDQ of downscaled copies of small pictures scatters (the box filter shrinks
  with the image), hashed at a size nearer their original's they land nearer; the
  phase-shifted rows move the repeated copy by half a copy pixel, for originals whose
  PDQ depends on where its sampling grid fell.
* :func:`pdq_crop_codes` (index side): codes of centred crops of an original, to store
  beside its own code so that cropped copies come within the threshold. Shared lists
  hold only the original's PDQ, so this helps only a list you hash yourself.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from hashmatch.engine.pdq import pdq_hash, pdq_hash_dihedral, reference_downsize
from hashmatch.engine.trim import trim_candidates

#: Centred crops stored per original by :func:`pdq_crop_codes` (share kept per side).
DEFAULT_CROP_KEEP = (0.9, 0.8)
#: :func:`uncrop_images`: share of the copy's side added back (a 5% crop removes 5.3%
#: of the copy's side; slightly less is best on the bench: over-extending hurts more
#: than under-extending), the splits per axis, and the size the copy is reduced to
#: first (PDQ keeps only a 64x64 downsample, so 256 px loses ~nothing and is 3x faster).
UNCROP_SHARE = 0.045
UNCROP_STEPS = 4
UNCROP_DIM = 256
#: :func:`derotate_images`: angles (degrees) the query is turned back by. A grid, not
#: the bench's 4 degrees: an angle 1 degree off still lands within 31 bits for most
#: pictures, 2 degrees off for about half (bench quality).
DEROTATE_ANGLES = (-5.0, -3.0, 3.0, 5.0)
#: :func:`upscaled_small`: copies smaller than this (longer side, px) are also hashed
#: enlarged to it. 256 px: PDQ's box filter is 2 px wide from here, and on the bench
#: it gains the same copies as 192 px and fewer wrong near-misses than 320-512 px.
SMALL_DIM = 256


def orientations(rgb: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/flips of an image as views, in ``pdq_hash_dihedral`` order:
    original, rot90, rot180, rot270, flip x (upside down), flip y (mirror), flip about
    the main diagonal (transpose), about the other diagonal. Checked against the
    reference ``dih`` images in tests/test_quality_paths.py."""
    t = rgb.swapaxes(0, 1)
    return [
        rgb,
        t[::-1],  # 90 degrees anticlockwise
        rgb[::-1, ::-1],
        t[:, ::-1],
        rgb[::-1],
        rgb[:, ::-1],
        t,
        t[::-1, ::-1],
    ]


def oriented_copies(rgb: np.ndarray) -> list[np.ndarray]:
    """:func:`orientations` as contiguous copies, made with OpenCV's flip/transpose
    (the same pixels, ~5x faster than numpy copying strided views of an RGB image)."""
    rgb = np.ascontiguousarray(rgb)
    t = cv2.transpose(rgb)
    return [
        rgb,
        cv2.flip(t, 0),
        cv2.flip(rgb, -1),
        cv2.flip(t, 1),
        cv2.flip(rgb, 0),
        cv2.flip(rgb, 1),
        t,
        cv2.flip(t, -1),
    ]


def pdq_orientations(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact dihedral PDQ: the PDQ of each re-oriented image -> (``uint8[8, 32]``,
    quality of the image as given), in :func:`orientations` order."""
    hashed = [pdq_hash(o) for o in oriented_copies(rgb)]
    return np.stack([h[0] for h in hashed]), hashed[0][1]


def pdq_query_codes(
    rgb: np.ndarray, *, dihedral: bool = True, trim: bool = True, exact: bool = True
) -> tuple[np.ndarray, list[int]]:
    """Query codes for one image -> (``uint8[k, 32]``, quality per row).

    k = 1 (plain) or 8 (dihedral) per image: the image as given, then each
    :func:`~hashmatch.engine.trim.trim_candidates` image (0-2), the order of
    ``hash_media``'s rows.
    ``exact=True`` hashes the 8 re-oriented pixel arrays (8 downsamples); ``False``
    derives them from one DCT (``pdq_hash_dihedral``, ~1.1x one hash). PDQ's box
    filter is not mirror-symmetric, so the DCT shortcut lands 10-30 bits from the
    flipped original's own PDQ where the exact path lands 0-2 (bench quality).
    """
    images = [rgb, *trim_candidates(rgb)] if trim else [rgb]
    return pdq_image_codes(images, dihedral=dihedral, exact=exact)


def pdq_image_codes(
    images: Sequence[np.ndarray],
    *,
    dihedral: bool,
    exact: bool = True,
    reference_resize: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """PDQ rows of each image in turn -> (``uint8[k, 32]``, quality per row): 1 row an
    image, or 8 with ``dihedral`` (exact orientations or the one-DCT shortcut, as in
    :func:`pdq_query_codes`). ``reference_resize``: each image shrunk like Meta's CLI
    first. The one loop behind :func:`pdq_query_codes` and ``hash_media``'s PDQ."""
    codes, qualities = [], []
    for image in images:
        pixels = reference_downsize(image) if reference_resize else image
        if dihedral and exact:
            c, q = pdq_orientations(pixels)
        elif dihedral:
            c, q = pdq_hash_dihedral(pixels)
        else:
            c1, q = pdq_hash(pixels)
            c = c1[None, :]
        codes.append(c)
        qualities.extend([q] * len(c))
    return np.concatenate(codes), qualities


def pdq_crop_codes(
    rgb: np.ndarray, keep: Sequence[float] = DEFAULT_CROP_KEEP
) -> tuple[np.ndarray, list[int]]:
    """Codes of centred crops keeping ``keep`` of each side -> (``uint8[len(keep), 32]``,
    qualities). Stored beside the original's own code (index side)."""
    h, w = rgb.shape[:2]
    codes = np.empty((len(keep), 32), np.uint8)
    qualities = []
    for n, k in enumerate(keep):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"crop keep share must be in (0, 1], got {k}")
        dh, dw = round(h * (1 - k) / 2), round(w * (1 - k) / 2)
        codes[n], q = pdq_hash(rgb[dh : h - dh, dw : w - dw])
        qualities.append(q)
    return codes, qualities


def uncrop_images(
    rgb: np.ndarray,
    *,
    share: float = UNCROP_SHARE,
    steps: int = UNCROP_STEPS,
    dim: int = UNCROP_DIM,
) -> list[np.ndarray]:
    """The image (reduced to ``dim`` px on its longer side) with ``share`` of each side
    added back as edge-replicated borders, split between the two ends in ``steps``
    ways per axis: ``steps**2`` images, row-major (top share 0 -> all, then left share
    0 -> all). A crop's offset is unknown, so the grid tries where the cut strip was."""
    if not 0.0 < share < 1.0 or steps < 1:
        raise ValueError(f"uncrop needs 0 < share < 1 and steps >= 1, got {share}, {steps}")
    rgb = _reduced(rgb, dim)
    h, w = rgb.shape[:2]
    eh, ew = round(h * share), round(w * share)
    splits = np.linspace(0.0, 1.0, steps) if steps > 1 else np.array([0.5])
    out = []
    for a in splits:
        top = round(eh * a)
        for b in splits:
            left = round(ew * b)
            out.append(
                cv2.copyMakeBorder(rgb, top, eh - top, left, ew - left, cv2.BORDER_REPLICATE)
            )
    return out


def _reduced(rgb: np.ndarray, dim: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = dim / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(rgb)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def derotate_images(
    rgb: np.ndarray, *, angles: Sequence[float] = DEROTATE_ANGLES, dim: int = UNCROP_DIM
) -> list[np.ndarray]:
    """The image (reduced to ``dim`` px) rotated about its centre by each angle, same
    canvas, the corners filled by replicating the edge (black corners would add a
    strong pattern of their own; replicated ones stay close to the original's edge)."""
    small = _reduced(rgb, dim)
    h, w = small.shape[:2]
    out = []
    for angle in angles:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(angle), 1.0)
        out.append(
            cv2.warpAffine(
                small, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        )
    return out


def upscaled_small(rgb: np.ndarray, dim: int = SMALL_DIM) -> np.ndarray | None:
    """The image enlarged (bilinear) to ``dim`` px on its longer side when it is smaller,
    else None. Why: a small copy of a larger original (a downscaled re-upload, a
    thumbnail) is hashed by PDQ with a 1-2 px box filter before the 64x64 decimation,
    while its original, hashed at full size, was smoothed more: PDQ of small copies
    scatters. Enlarged first, the copy is filtered more like its original."""
    h, w = rgb.shape[:2]
    if max(h, w) >= dim:
        return None
    scale = dim / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_LINEAR)


def replicated_small(rgb: np.ndarray, dim: int = SMALL_DIM) -> np.ndarray | None:
    """The image with each pixel repeated k x k times, k the smallest whole factor that
    makes its longer side ``dim`` px or more, when it is smaller; else None.

    Why, beside :func:`upscaled_small`: a pixel of a downscaled copy is already the
    average of a block of its original; repeating it rebuilds that block at (a whole
    multiple of) its size without the extra smoothing interpolation adds, and every
    copy pixel keeps the same size. PDQ then filters and samples the copy as it did an
    original of that size: nearer when the original was larger than 256 px (a 300-400
    px picture halved: 2-6 bits vs 12-20 bilinearly), farther when it was 256 px or
    less, where the bilinear row is nearer (``bench quality`` and README, quality)."""
    h, w = rgb.shape[:2]
    if max(h, w) >= dim:
        return None
    k = -(-dim // max(h, w))
    return np.repeat(np.repeat(np.ascontiguousarray(rgb), k, axis=0), k, axis=1)


def phase_shifted_small(rgb: np.ndarray, dim: int = SMALL_DIM) -> list[np.ndarray]:
    """:func:`replicated_small` moved by half a copy pixel (k // 2 px of the enlarged
    image, k its factor; edges replicated): down, right, then both; empty when the
    image is ``dim`` px or more.

    Why: the copy's pixel grid falls somewhere against the 4-8 px grid on which PDQ
    sampled its original, and on small and textured originals that phase moves the
    hash (a whole-pixel shift of a 256 px original moves its PDQ by up to 112 bits).
    The enlargement as given keeps one phase; these three try the half-pixel ones.
    On the bench's 203 copies under 256 px, added beside the as-given, bilinear and
    replicated rows: 33 land nearer (originals of 512-1000 px quartered: 8-10 -> 2
    bits; rocket#00 quartered 34 -> 28, within 31), the nearest wrong original moves
    from 95.5 to 95.2 bits on average and stays >= 80 (README, Matching quality).
    All 8 half-pixel directions gain no more copies within 31 (and bring the wrong
    originals nearer: 94.9); whole-pixel shifts of 1..k-1 px (15 rows quartered) none."""
    rep = replicated_small(rgb, dim)
    if rep is None:
        return []
    k = rep.shape[0] // rgb.shape[0]
    s = max(1, k // 2)
    h, w = rep.shape[:2]
    out = []
    for dy, dx in ((s, 0), (0, s), (s, s)):
        moved = cv2.copyMakeBorder(rep, dy, 0, dx, 0, cv2.BORDER_REPLICATE)
        out.append(np.ascontiguousarray(moved[:h, :w]))
    return out


def pdq_small_codes(
    rgb: np.ndarray,
    dim: int = SMALL_DIM,
    *,
    bilinear: bool = True,
    replicate: bool = False,
    phases: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """PDQ of :func:`upscaled_small` (``bilinear``), then of :func:`replicated_small`
    (``replicate``), then of the 3 :func:`phase_shifted_small` images (``phases``) ->
    (``uint8[k, 32]``, qualities): k = 0 for an image already ``dim`` px or more, else
    one row per enlargement asked for."""
    images = []
    if bilinear:
        images.append(upscaled_small(rgb, dim))
    if replicate:
        images.append(replicated_small(rgb, dim))
    if phases:
        images.extend(phase_shifted_small(rgb, dim))
    hashed = [pdq_hash(im) for im in images if im is not None]
    if not hashed:
        return np.empty((0, 32), np.uint8), []
    return np.stack([h[0] for h in hashed]), [h[1] for h in hashed]


def pdq_derotate_codes(rgb: np.ndarray, **kwargs) -> tuple[np.ndarray, list[int]]:
    """PDQ of each :func:`derotate_images` image -> (``uint8[len(angles), 32]``, qualities)."""
    hashed = [pdq_hash(im) for im in derotate_images(rgb, **kwargs)]
    return np.stack([h[0] for h in hashed]), [h[1] for h in hashed]


def pdq_uncrop_codes(rgb: np.ndarray, **kwargs) -> tuple[np.ndarray, list[int]]:
    """PDQ of each :func:`uncrop_images` image -> (``uint8[steps**2, 32]``, qualities)."""
    hashed = [pdq_hash(im) for im in uncrop_images(rgb, **kwargs)]
    return np.stack([h[0] for h in hashed]), [h[1] for h in hashed]
