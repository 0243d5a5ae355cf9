"""Dispatch ``python -m bench NAME [args]``; ``python -m bench all`` runs every suite."""

from __future__ import annotations

import importlib
import sys

SUITES = ("hashing", "indexes", "store", "service", "clients", "scan", "quality")
# not in ``all``: minutes of mixed load and correctness checks; export's CLI timings; CLI start-up;
# vPDQ match CPU per query (README "vPDQ")
ON_DEMAND = ("soak", "scan_walk", "export", "cli_startup", "vpdq_match")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"usage: python -m bench {{{'|'.join(SUITES + ON_DEMAND)}|all}} [suite options]")
        return
    name, rest = argv[0], argv[1:]
    names = SUITES if name == "all" else (name,)
    for suite in names:
        if suite not in SUITES + ON_DEMAND:
            sys.exit(f"unknown benchmark {suite!r}; choose from {', '.join(SUITES)}")
        try:
            module = importlib.import_module(f"bench.{suite}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{suite}":
                raise
            print(f"# bench {suite}: not written yet")
            continue
        print(f"# bench {suite}")
        module.main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
