"""The ``hashmatch`` command line: a thin skin over the library.

Each area registers its verbs in its own module under ``hashmatch.server.commands``
(``COMMANDS``: a list of click commands/groups); this file only assembles them.
"""

from __future__ import annotations

import importlib

import click

# Modules that contribute verbs; each exposes COMMANDS.
_COMMAND_MODULES = ("hashing", "store", "service", "scan", "mirror")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hashmatch")
def cli() -> None:
    """hashmatch: match media against shared hash lists (PDQ, pHash, vPDQ, MD5, ...)."""


for _name in _COMMAND_MODULES:
    _module = importlib.import_module(f"hashmatch.server.commands.{_name}")
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
