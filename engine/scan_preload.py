"""Imported once by the scan workers' fork server: warm the hashing stack before forking.

Why: numba loads each kernel's compiled code from its cache on the first call, in
every process. Workers forked from a server that has not called the kernels pay that
again each (about a second per worker at start, measured: a 2-file scan took ~1.5 s).
Calling PDQ once here means every forked worker inherits the loaded code.

Only numba and Pillow's plugin registry are touched: no OpenCV call, because OpenCV
starts a thread pool and a forked child of a process that ran one can deadlock (the
reason workers come from a fork server at all; see ``scan.worker_context``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from hashmatch.engine.pdq import pdq_hash, pdq_hash_dihedral


def warm() -> None:
    """Call every PDQ kernel once (both the filtered and the 64x64 path, for RGB and
    for the luma planes ``--fast-decode`` hands PDQ)."""
    rng = np.random.default_rng(0)
    for shape in ((67, 71, 3), (67, 71)):
        pdq_hash(rng.integers(0, 256, shape, dtype=np.uint8))
        pdq_hash(rng.integers(0, 256, (64, 64, *shape[2:]), dtype=np.uint8))
        pdq_hash_dihedral(rng.integers(0, 256, shape, dtype=np.uint8))
    Image.init()


warm()
