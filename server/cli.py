"""The ``hashmatch`` command line: a thin skin over the library.

Each area registers its verbs in its own module under ``hashmatch.server.commands``
(``COMMANDS``: a list of click commands/groups); this file only assembles them.
"""

from __future__ import annotations

import contextlib
import importlib

import click

# Modules that contribute verbs; each exposes COMMANDS.
_COMMAND_MODULES = ("hashing", "store", "service", "tokens", "scan", "mirror")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hashmatch")
def cli() -> None:
    """hashmatch: match media against shared hash lists (PDQ, pHash, vPDQ, MD5, ...)."""


for _name in _COMMAND_MODULES:
    _module = importlib.import_module(f"hashmatch.server.commands.{_name}")
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Run the CLI; a stop signal ends it with one line, then the process dies of that
    signal (a shell shows 128 + its number; see :mod:`hashmatch.server.interrupts`)."""
    import sys

    from hashmatch.server import interrupts

    interrupts.install()
    try:
        cli()
    except interrupts.Interrupted as exc:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP): nobody to tell
            print(f"hashmatch: interrupted ({exc.describe()})", file=sys.stderr, flush=True)
        interrupts.exit(exc.signum)


if __name__ == "__main__":
    main()
