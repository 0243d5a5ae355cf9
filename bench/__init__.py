"""Benchmarks: ``python -m bench NAME`` (or ``make bench`` for all of them).

Each module here has ``main(argv: list[str]) -> None`` and compares hashmatch
against the tools users would otherwise pick, in the same run, printing ratios.
"""
