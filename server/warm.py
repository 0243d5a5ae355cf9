"""Fill numba's kernel cache before the first ``hashmatch serve``.

    python -m hashmatch.server.warm      # `make install` runs it once; `make warm` again

Why: the index and hashing kernels are compiled by numba with ``cache=True``: the first
process that runs one compiles it and writes the machine code beside its source
(``indexes/__pycache__``, ``engine/__pycache__``), later ones load it. A server runs
every kernel in its warm-up before it reports SERVING, so on a fresh checkout the first
``make run`` waited for the compiler (~80 s on a loaded 2-core host, against ~7 s with
the cache filled), and so did the test suite's first servers (both of its workers at
once). This runs that same warm-up (``ServiceHost._warm_up``'s two halves) once, on an
engine over a throw-away data dir with the server's default index kind and shards: the
index kernels here and the hashing kernels in a second process at the same time (they
are separate kernels; numba compiles on one core). Best effort, as in the server: a
kernel that fails to compile is logged, and the server compiles (or reports) it again.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time

from hashmatch.server.app import ServiceHost, open_engine
from hashmatch.server.config import ServerConfig

_HASHING_ONLY = "--hashing"


def _warm_indexes() -> None:
    """The server's index warm-up, on an empty engine in a throw-away data dir."""
    with (
        tempfile.TemporaryDirectory(prefix="hashmatch-warm-") as folder,
        open_engine(ServerConfig(data_dir=folder)) as engine,
    ):
        ServiceHost._warm_up_indexes(engine)


def warm_kernel_cache() -> float:
    """Both halves of the server's warm-up, side by side; returns the seconds taken."""
    started = time.perf_counter()
    hashing = subprocess.Popen([sys.executable, "-m", __spec__.name, _HASHING_ONLY])
    try:
        _warm_indexes()
    finally:
        hashing.wait()
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="hashmatch warm: %(message)s")
    if argv == [_HASHING_ONLY]:
        ServiceHost._warm_up_hashing()
        return
    print("compiling the index and hashing kernels into numba's cache ...", file=sys.stderr)
    seconds = warm_kernel_cache()
    print(f"kernels ready in {seconds:.1f} s (the first serve starts warm)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
