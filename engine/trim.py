"""Trim borders, letterbox/pillarbox bars and blurred padding before hashing.

Why: PDQ hashes the whole frame, so a copy of a picture with a 20% border, cinema
bars, or the picture pasted into a screenshot hashes far from the original (Thorn's
perception benchmark: PDQ recall 1.3% on "pad 20%"). Cutting such frames back to the
content before hashing brings those copies back within the match threshold.

What counts as a border (the detection runs on a copy at most ``DETECT_DIM`` px on a
side, so its cost does not grow with the image):

* **Solid bands**: lines (rows from the top/bottom, columns from the left/right) whose
  pixels are, almost all, the colour of the band's first line. A band may carry a few
  small marks (UI icons, a channel logo in a bar) on under ``1 - SOLID_FRACTION`` of a
  line. Up to ``ROUNDS`` nested bands are removed (a screenshot: UI bar, then page
  margin, then the picture). A band ends in an edge across the line, searched up to
  ``EDGE_REACH`` lines on (JPEG ringing softens the last lines of a bar). When one side
  has a band and the opposite side's first lines of the same width are that band's
  colour but run on into the picture (a black pad beside a black sky), that width is
  cut there too: padding is usually centred.
* **Blurred bands**: lines with almost no fine detail (the "blurred copy of the picture
  behind it" padding of phone videos), only when the opposite side has such a band
  too, and the content between them has clearly more detail. Then the narrower of
  the two widths is cut from both sides (padding is centred; the wider side's extra
  is smooth content such as sky, which is kept). Up to ``BLUR_EDGE_SKIP`` noisy
  lines at the very edge (JPEG's partial blocks at the bottom/right) may come first.

Nested bands are ambiguous (a screenshot's page margin, or the picture's own frame
or caption strip inside letterbox bars), so :func:`border_boxes` /
:func:`trim_candidates` give the outer-bands-only box as a second candidate then;
``hash_media`` queries both.

What is never cut: a line with real variation, anything once less than
``MIN_KEEP`` of a side would remain, and single-sided smooth areas (a clear sky, a
studio backdrop on one side). A plain photo comes back unchanged; the tests check
this on scikit-image's photos.
"""

from __future__ import annotations

import cv2
import numpy as np

DETECT_DIM = 256  # detection runs on a copy this big at most
SOLID_TOL = 12.0  # max per-channel deviation (0..255) from the band colour
SOLID_FRACTION = 0.8  # share of a line within SOLID_TOL to call it part of a band
SOLID_FLAT = 3.0  # and the line's median deviation must be this small (bars are flat)
BAND_STEP = 5.0  # colour step (grey levels) from one nested band to the next
EDGE_REACH = 6  # lines after a band's last flat line searched for its edge (JPEG ringing)
SOLID_EDGE = 0.5  # share of the first content line(s) that must differ from the band
BLUR_SIGMA = 1.5  # scale of the "fine detail" measure
BLUR_LINE_MAX = 0.8  # mean fine detail (grey levels) of a blurred-band line
BLUR_EDGE_SKIP = 12  # noisy lines allowed at the very edge before a blurred band
SEAM_REACH = 3  # lines past a smooth run searched for the paste seam
BLUR_MIN = 0.03  # blurred bands must each be at least this share of the side
BLUR_CONTRAST = 4.0  # content must carry this many times the bands' fine detail
MIN_BAND = 0.01  # ignore bands thinner than this share of the side
MIN_KEEP = 0.25  # never keep less than this share of a side
ROUNDS = 3


def trim_borders(rgb: np.ndarray) -> np.ndarray:
    """Return the content of ``uint8[h, w, 3]`` without borders/bars (a view, no copy).

    The image comes back as given when no border is found.
    """
    top, bottom, left, right = border_box(rgb)
    if (top, bottom, left, right) == (0, rgb.shape[0], 0, rgb.shape[1]):
        return rgb
    return rgb[top:bottom, left:right]


def border_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The content rectangle ``(top, bottom, left, right)`` in full-size pixels
    (half-open: ``rgb[top:bottom, left:right]``)."""
    return border_boxes(rgb)[0]


def border_boxes(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Candidate content rectangles, best guess first: ``[border_box]``, plus the box
    inside the outermost bands only when further nested bands were cut.

    Why two: a nested band may be the page margin inside a screenshot's bars (cut it)
    or the picture's own frame or caption strip inside letterbox bars (keep it). Only
    the original tells, so the hashing path queries both (bench: letterbox 95 -> 100%,
    screenshot 71 -> 79% at PDQ <= 31). The whole image when nothing is found.
    """
    h, w = rgb.shape[:2]
    whole = (0, h, 0, w)
    if rgb.ndim != 3 or h < 16 or w < 16:
        return [whole]
    scale = min(1.0, DETECT_DIM / max(h, w))
    small = rgb
    if scale < 1.0:
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    sh, sw = small.shape[:2]

    box = [0, sh, 0, sw]  # top, bottom, left, right on the small copy
    outer = None  # the box after the first round, if more rounds cut
    for n in range(ROUNDS):
        cut = _solid_cuts(small[box[0] : box[1], box[2] : box[3]])
        if not any(cut):
            break
        if n == 1:
            outer = list(box)
        box = [box[0] + cut[0], box[1] - cut[1], box[2] + cut[2], box[3] - cut[3]]
        if _too_small(box, sh, sw):
            return [whole]
    cut = _blur_cuts(small[box[0] : box[1], box[2] : box[3]])
    box = [box[0] + cut[0], box[1] - cut[1], box[2] + cut[2], box[3] - cut[3]]
    if _too_small(box, sh, sw) or box == [0, sh, 0, sw]:
        return [whole]
    boxes = [_full_size(box, h, w, sh, sw)]
    if outer is not None:
        cut = _blur_cuts(small[outer[0] : outer[1], outer[2] : outer[3]])
        outer = [outer[0] + cut[0], outer[1] - cut[1], outer[2] + cut[2], outer[3] - cut[3]]
        second = _full_size(outer, h, w, sh, sw)
        if second != boxes[0]:
            boxes.append(second)
    return boxes


def _full_size(box: list[int], h: int, w: int, sh: int, sw: int) -> tuple[int, int, int, int]:
    """Back to full size, rounding inward (the small copy's boundary line mixes both)."""
    fy, fx = h / sh, w / sw
    return (
        min(h, int(np.ceil(box[0] * fy))),
        max(0, int(np.floor(box[1] * fy))),
        min(w, int(np.ceil(box[2] * fx))),
        max(0, int(np.floor(box[3] * fx))),
    )


def trim_candidates(rgb: np.ndarray) -> list[np.ndarray]:
    """The content of each :func:`border_boxes` rectangle (views), best guess first;
    empty when no border is found."""
    boxes = border_boxes(rgb)
    if boxes[0] == (0, rgb.shape[0], 0, rgb.shape[1]):
        return []
    return [rgb[t:b, lo:hi] for t, b, lo, hi in boxes]


def _too_small(box: list[int], sh: int, sw: int) -> bool:
    return box[1] - box[0] < MIN_KEEP * sh or box[3] - box[2] < MIN_KEEP * sw


def _sides(a: np.ndarray) -> list[np.ndarray]:
    """The image as lines from each edge inward: top, bottom, left, right."""
    return [a, a[::-1], a.swapaxes(0, 1), a.swapaxes(0, 1)[::-1]]


def _solid_cuts(a: np.ndarray) -> list[int]:
    sides = _sides(a)
    cuts = []
    for n, lines in enumerate(sides):
        run = _solid_run(lines)
        side = a.shape[0] if n < 2 else a.shape[1]
        if run < max(1, MIN_BAND * side):
            cuts.append(0)
        else:
            cuts.append(min(side, run + 1))  # +1: the blended boundary line
    # Centred padding whose colour runs on into the picture on one side (a black pad
    # beside the moon's black sky, a white page margin above a white table): that
    # side's band has no edge where it ends, so _solid_run gives up. When the
    # opposite side has a band and this side's first lines of the same width are
    # that band's colour, cut the same width here (bench: pad/letterbox/screenshot
    # misses were mostly this).
    for n, m in ((0, 1), (1, 0), (2, 3), (3, 2)):
        if cuts[n] > EDGE_REACH and not cuts[m] and _solid_like(sides[m], cuts[n], sides[n][0]):
            cuts[m] = cuts[n]
    return cuts


def _solid_like(lines: np.ndarray, width: int, band: np.ndarray) -> bool:
    """Are the first ``width - 1`` lines (nearly all) the colour of the band's first
    line? The last ``EDGE_REACH`` of them need not be flat (JPEG ringing)."""
    dev = np.abs(lines[: width - 1] - np.median(band, axis=0)).max(axis=2)
    near = (dev <= SOLID_TOL).mean(axis=1) >= SOLID_FRACTION
    flat = np.median(dev[: width - EDGE_REACH], axis=1) <= SOLID_FLAT
    return bool(near.all() and flat.all())


def _solid_run(lines: np.ndarray) -> int:
    """How many lines from the edge are (nearly all) the first line's colour."""
    ref = np.median(lines[0], axis=0)
    limit = int(lines.shape[0] * (1 - MIN_KEEP))
    start = 0
    while start < limit:  # in chunks: a photo's edge fails on its first line
        stop = min(limit, start + 16)
        dev = np.abs(lines[start : stop + EDGE_REACH] - ref).max(axis=2)  # [lines, length]
        ok = ((dev <= SOLID_TOL).mean(axis=1) >= SOLID_FRACTION) & (
            np.median(dev, axis=1) <= SOLID_FLAT
        )
        bad = np.flatnonzero(~ok[: stop - start])
        if bad.size:
            run = int(bad[0])
            # A bar ends in an edge across the line (content starts everywhere at
            # once); a smooth sky or backdrop ends where an object rises into it.
            # JPEG ringing blurs the bar's last lines, so the edge may come a few
            # lines after the first line that is no longer flat.
            edge = (dev[run : run + EDGE_REACH] > SOLID_TOL).mean(axis=1).max()
            if edge >= SOLID_EDGE or _next_band(lines[start + run], ref):
                return start + run
            return 0
        start = stop
    return limit


def _next_band(line: np.ndarray, ref: np.ndarray) -> bool:
    """Does a band of another colour start here (a toolbar above a page margin)?
    A clear step, not a sky's gradual drift, and flat itself."""
    own = np.abs(line - np.median(line, axis=0)).max(axis=1)
    step = float(np.median(np.abs(line - ref).max(axis=1)))
    flat = (own <= SOLID_TOL).mean() >= SOLID_FRACTION and np.median(own) <= SOLID_FLAT
    return flat and step >= BAND_STEP


def _blur_cuts(a: np.ndarray) -> list[int]:
    grey = a.mean(axis=2)
    detail = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), BLUR_SIGMA))
    # Ignore the outermost 2 px of each line (edge effects of the blur itself).
    cuts = [0, 0, 0, 0]
    for axis, (i, j) in ((0, (0, 1)), (1, (2, 3))):
        d = detail if axis == 0 else detail.T
        side = d.shape[0]
        per_line = d[:, 2:-2].mean(axis=1) if d.shape[1] > 8 else d.mean(axis=1)
        runs, starts = [], []
        for lines in (per_line, per_line[::-1]):
            # JPEG's partial blocks at the bottom/right edge ring on smooth padding:
            # a few noisy lines at the very edge may come before the smooth run.
            calm = np.flatnonzero(lines[:BLUR_EDGE_SKIP] <= BLUR_LINE_MAX)
            start = int(calm[0]) if calm.size else side
            bad = np.flatnonzero(lines[start:] > BLUR_LINE_MAX)
            runs.append(start + int(bad[0]) if bad.size else side)
            starts.append(start)
        width = min(runs)
        if width - max(starts) < BLUR_MIN * side or side - 2 * width < MIN_KEEP * side:
            continue
        band = max(
            per_line[starts[0] : width].mean(), per_line[side - width : side - starts[1]].mean()
        )
        content = per_line[width : side - width].mean()
        if content < BLUR_CONTRAST * max(band, 0.25):
            continue
        # The detail measure bleeds a few lines into the band; the paste seam is
        # where consecutive lines differ most, just past the smooth run.
        g = grey if axis == 0 else grey.T
        seam = np.abs(np.diff(g, axis=0)).mean(axis=1)  # seam[k]: lines k, k+1
        lo, hi = max(0, width - 2), min(side // 2 - 1, width + 2 * SEAM_REACH)
        top_cut = lo + 1 + int(np.argmax(seam[lo:hi])) if hi > lo else width
        rseam = seam[::-1]
        bottom_cut = lo + 1 + int(np.argmax(rseam[lo:hi])) if hi > lo else width
        cut = min(top_cut, bottom_cut)
        # ``cut`` is the seam's first content line: cut exactly there. (One line more,
        # as before, over-trimmed small pictures by 1-3 px a side and moved PDQ 30+
        # bits on some: pad 20% blurred misses 11 -> 7 of 84 at 31, bench quality.)
        cuts[i] = cuts[j] = min(side, cut)
    return cuts
