"""Hashing speed: ours vs the reference libraries, in one process, same inputs.

``python -m bench hashing [--quick] [--repeats N]`` prints a Markdown table (ms per
image, median of N runs after a warm-up) for

* PDQ: ours (``pdq_hash``) vs ``pdqhash.compute``; dihedral (``pdq_hash_dihedral``) vs a
  single PDQ and vs ``pdqhash.compute_dihedral``;
* pHash/wHash/dHash/aHash: ours (``imagehash_codes``) vs ``imagehash`` on a Pillow image,
  and all four together (one greyscale conversion) vs four imagehash calls;

on (a) a 512x512 photo, (b) a 1920x1080 photo and (c) a 12 MP (4000x3000) photo, made
by resizing a scikit-image photo, with decoding excluded (pixels in memory: a numpy
array for ours and pdqhash, a loaded Pillow image for imagehash) and included (JPEG
bytes in: ours is ``hash_media``, the peers decode with Pillow as python-threatexchange
does).
``--quick`` (CI) uses a 1600x1200 image instead of 12 MP and fewer repeats.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image


def _photo(width: int, height: int) -> np.ndarray:
    import skimage.data

    base = Image.fromarray(skimage.data.astronaut())
    if base.size == (width, height):
        return np.asarray(base)
    return np.asarray(base.resize((width, height), Image.Resampling.BICUBIC))


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: numba compilation, imports, caches,
    fn()  # and the per-size state hashers learn on the second sight of a size
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _pil_rgb(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    return im.convert("RGB")


def cases(rgb: np.ndarray, data: bytes):
    """(name, decode, ours, peer, peer_name) tuples for one image."""
    import imagehash
    import pdqhash

    from hashmatch.engine.hashing import HashOptions, hash_media
    from hashmatch.engine.imagehashes import imagehash_codes
    from hashmatch.engine.pdq import pdq_hash, pdq_hash_dihedral

    pil = Image.fromarray(rgb)
    pil.load()
    ih = {
        "phash": imagehash.phash,
        "whash": imagehash.whash,
        "dhash": imagehash.dhash,
        "ahash": imagehash.average_hash,
    }
    dihedral = HashOptions(dihedral=True)
    out = [
        ("PDQ", "excluded", lambda: pdq_hash(rgb), lambda: pdqhash.compute(rgb), "pdqhash"),
        (
            "PDQ",
            "included",
            lambda: hash_media(data, ["pdq"]),
            lambda: pdqhash.compute(np.asarray(_pil_rgb(data))),
            "pdqhash",
        ),
        (
            "PDQ dihedral (8)",
            "excluded",
            lambda: pdq_hash_dihedral(rgb),
            lambda: pdqhash.compute_dihedral(rgb),
            "pdqhash",
        ),
        (
            "PDQ dihedral (8)",
            "included",
            lambda: hash_media(data, ["pdq"], dihedral),
            lambda: pdqhash.compute_dihedral(np.asarray(_pil_rgb(data))),
            "pdqhash",
        ),
        (
            "PDQ dihedral vs our single",
            "excluded",
            lambda: pdq_hash_dihedral(rgb),
            lambda: pdq_hash(rgb),
            "ours, 1 PDQ",
        ),
    ]
    for name, fn in ih.items():
        out.append(
            (
                name,
                "excluded",
                lambda n=name: imagehash_codes(rgb, [n]),
                lambda f=fn: f(pil),
                "imagehash",
            )
        )
        out.append(
            (
                name,
                "included",
                lambda n=name: hash_media(data, [n]),
                lambda f=fn: f(_pil_rgb(data)),
                "imagehash",
            )
        )
    out.append(
        (
            "all 4 imagehash types",
            "excluded",
            lambda: imagehash_codes(rgb),
            lambda: [f(pil) for f in ih.values()],
            "imagehash x4",
        )
    )
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench hashing")
    parser.add_argument("--quick", action="store_true", help="small large-image, few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    parser.add_argument("--only", default=None, help="substring of case names to run")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 7)
    # 1920x1080 is the scan benchmark's image size (issue 5's decode-only anchor)
    sizes = [(512, 512), (1600, 1200)] if args.quick else [(512, 512), (1920, 1080), (4000, 3000)]
    print("| case | image | decode | ours ms | peer | peer ms | speed-up (peer/ours) |")
    print("|---|---|---|---:|---|---:|---:|")
    for w, h in sizes:
        rgb = _photo(w, h)
        data = _jpeg(rgb)
        label = f"{w}x{h}" if w * h < 10_000_000 else f"{w}x{h} (12 MP)"
        for name, decode, ours, peer, peer_name in cases(rgb, data):
            if args.only and args.only.lower() not in name.lower():
                continue
            reps = repeats if w * h < 4_000_000 or "whash" not in name else max(1, repeats // 3)
            t_ours = _ms(ours, reps)
            t_peer = _ms(peer, reps)
            ratio = (
                f"costs {t_ours / t_peer:.2f}x"  # ours vs ours: report the cost ratio
                if peer_name.startswith("ours")
                else f"{t_peer / t_ours:.1f}x"
            )
            print(
                f"| {name} | {label} | {decode} | {t_ours:.2f} | {peer_name} | "
                f"{t_peer:.2f} | {ratio} |",
                flush=True,
            )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
