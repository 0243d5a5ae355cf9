"""The edits the quality benchmark applies: how real copies of a picture differ.

Each transform is ``fn(rgb: uint8[h, w, 3], rng) -> uint8[h', w', 3]``; ``rng`` makes
random placements (crop offsets, noise) repeatable. The set follows Thorn's perception
benchmark (JPEG, resize, blur, gamma, noise, watermark, rotate, crop, pad) plus the
dodges that benchmark leaves out: flips, 90-degree rotations, letterbox bars, blurred
padding and screenshots.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def jpeg(quality: int) -> Transform:
    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    return fn


def resize(scale: float) -> Transform:
    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)

    return fn


def blur(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), max(rgb.shape[:2]) / 200)


def gamma(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    table = (255 * (np.arange(256) / 255) ** 0.6).round().astype(np.uint8)
    return table[rgb]


def noise(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


def watermark(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    im = Image.fromarray(rgb)
    h, w = rgb.shape[:2]
    font = ImageFont.load_default(size=max(10, h // 12))
    draw = ImageDraw.Draw(im)
    draw.text((w // 20, h - h // 6), "hashmatch.example", fill=(255, 255, 255), font=font)
    return np.asarray(im)


def rotate(degrees: float) -> Transform:
    """Rotate about the centre, same canvas (corners black), as phones' straighten."""

    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR)

    return fn


def crop(share: float) -> Transform:
    """Cut ``share`` of each side's length away, split at a random place (not centred)."""

    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        ch, cw = round(h * share), round(w * share)
        top, left = int(rng.integers(0, ch + 1)), int(rng.integers(0, cw + 1))
        return rgb[top : h - (ch - top), left : w - (cw - left)]

    return fn


def pad_solid(share: float) -> Transform:
    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = round(h * share / 2), round(w * share / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        return cv2.copyMakeBorder(rgb, ph, ph, pw, pw, cv2.BORDER_CONSTANT, value=colour)

    return fn


def pad_blurred(share: float) -> Transform:
    """Picture centred on a blurred, stretched copy of itself (phone-video style)."""

    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = round(h * share / 2), round(w * share / 2)
        bg = cv2.resize(rgb, (w + 2 * pw, h + 2 * ph), interpolation=cv2.INTER_LINEAR)
        bg = cv2.GaussianBlur(bg, (0, 0), max(h, w) / 25)
        bg[ph : ph + h, pw : pw + w] = rgb
        return bg

    return fn


def letterbox(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Into a frame of the other orientation with black bars (16:9 <-> 9:16 style)."""
    h, w = rgb.shape[:2]
    if w >= h:  # landscape picture in a taller frame: bars top and bottom
        bar = round(w * 9 / 16 * 0.5) if h < w * 9 / 16 else round(h * 0.2)
        return cv2.copyMakeBorder(rgb, bar, bar, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    bar = round(h * 0.25)
    return cv2.copyMakeBorder(rgb, 0, 0, bar, bar, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def screenshot(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scaled into a larger page with a status bar, a toolbar and margins."""
    h, w = rgb.shape[:2]
    inner = cv2.resize(rgb, (round(w * 0.8), round(h * 0.8)), interpolation=cv2.INTER_AREA)
    ih, iw = inner.shape[:2]
    ch, cw = round(h * 1.25), w
    page = np.full((ch, cw, 3), 246, np.uint8)
    bar = max(6, ch // 14)
    page[:bar] = (32, 32, 36)
    page[ch - bar :] = (240, 240, 240)
    im = Image.fromarray(page)
    draw = ImageDraw.Draw(im)
    for k in range(3):  # status icons / toolbar buttons: small marks in the bars
        x = cw - (k + 1) * bar * 1.2
        draw.rectangle([x, bar * 0.3, x + bar * 0.5, bar * 0.7], fill=(230, 230, 230))
        x = cw * (k + 1) / 4
        draw.ellipse([x, ch - bar * 0.8, x + bar * 0.6, ch - bar * 0.2], fill=(90, 90, 90))
    page = np.asarray(im).copy()
    top = bar + (ch - 2 * bar - ih) // 2
    left = (cw - iw) // 2
    page[top : top + ih, left : left + iw] = inner
    return page


def flip_h(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rgb[:, ::-1]


def flip_v(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rgb[::-1]


def rot90(k: int) -> Transform:
    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.rot90(rgb, k)

    return fn


def then(first: Transform, second: Transform) -> Transform:
    def fn(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return second(first(rgb, rng), rng)

    return fn


#: name -> transform, in table order. Geometric edits are saved as JPEG q90 (as a
#: re-upload would be), so they are never judged on pixel-perfect copies.
TRANSFORMS: dict[str, Transform] = {
    "jpeg q95": jpeg(95),
    "jpeg q50": jpeg(50),
    "jpeg q20": jpeg(20),
    "resize 0.5": resize(0.5),
    "resize 0.25": resize(0.25),
    "blur": blur,
    "gamma 0.6": gamma,
    "noise": noise,
    "watermark": watermark,
    "rotate 4": then(rotate(4), jpeg(90)),
    "rotate 15": then(rotate(15), jpeg(90)),
    "crop 5%": then(crop(0.05), jpeg(90)),
    "crop 20%": then(crop(0.20), jpeg(90)),
    "pad 20% solid": then(pad_solid(0.20), jpeg(90)),
    "pad 20% blurred": then(pad_blurred(0.20), jpeg(90)),
    "letterbox": then(letterbox, jpeg(90)),
    "screenshot": then(screenshot, jpeg(90)),
    "flip h": then(flip_h, jpeg(90)),
    "flip v": then(flip_v, jpeg(90)),
    "rotate 90": then(rot90(1), jpeg(90)),
    "rotate 180": then(rot90(2), jpeg(90)),
    "rotate 270": then(rot90(3), jpeg(90)),
}

#: The subset ``--quick`` runs: one of each kind of weakness and of strength.
QUICK = (
    "jpeg q50",
    "resize 0.25",
    "blur",
    "crop 5%",
    "pad 20% solid",
    "pad 20% blurred",
    "letterbox",
    "flip h",
    "rotate 90",
)
