"""`python -m hashmatch.server.warm` (run by `make install`): after it, a server's
warm-up loads every kernel from numba's cache and compiles none.

Why: a fresh checkout's first `make run` compiled the index and hashing kernels before
SERVING (~80 s on a loaded 2-core host, ~7 s with the cache filled), and so did the
test suite's first servers, in both workers at once.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: in a fresh process: the server's own warm-up (a new data dir), then each kernel's
#: loads from the cache (hits) and compilations (misses), by signature
SERVER_WARM_UP = r"""
import json, sys, tempfile
from hashmatch.server.app import ServiceHost, open_engine
from hashmatch.server.config import ServerConfig

with tempfile.TemporaryDirectory() as folder, open_engine(ServerConfig(data_dir=folder)) as e:
    ServiceHost._warm_up(e)
hits, misses = [], []
for name, module in list(sys.modules.items()):
    if not name.startswith("hashmatch"):
        continue
    for attr, kernel in vars(module).items():
        if hasattr(kernel, "py_func") and hasattr(kernel, "stats"):
            hits += [f"{name}.{attr}"] * sum(kernel.stats.cache_hits.values())
            misses += [f"{name}.{attr}{sig}" for sig in kernel.stats.cache_misses]
print(json.dumps({"hits": sorted(set(hits)), "misses": sorted(misses)}))
"""


def test_after_the_install_warm_up_a_server_compiles_no_kernel():
    warm = subprocess.run([sys.executable, "-m", "hashmatch.server.warm"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert warm.returncode == 0, warm.stderr
    assert "kernels ready in" in warm.stderr, warm.stderr
    assert "hashmatch warm:" not in warm.stderr, warm.stderr  # no warm-up step failed
    done = subprocess.run([sys.executable, "-c", SERVER_WARM_UP],
                          capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["misses"] == [], seen
    modules = {name.rsplit(".", 1)[0] for name in seen["hits"]}  # both halves ran
    assert {"hashmatch.indexes.kernels", "hashmatch.engine.pdq_kernels"} <= modules, seen
