"""The full ``--help`` text of every ``hashmatch`` verb, recursively, as one string.

Why: the CLI's verbs import their libraries when they run, not when the CLI is
imported (start-up time, see the README's "CLI start-up"); a verb whose options or
help came from a module it no longer imports at start-up could change unnoticed.
``tests/data/cli_help.txt`` holds the text the eagerly-importing CLI printed;
``tests/test_cli_startup.py`` compares. After a deliberate change to a verb's
options or help, regenerate it:

    .venv/bin/python tests/cli_help_tree.py > tests/data/cli_help.txt
"""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner

#: a fixed width: click wraps help to the terminal's (COLUMNS), capped at 80
WIDTH = "80"


def command_paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command's argument path, the group first, subcommands sorted by name."""
    yield path
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from command_paths(command.commands[name], (*path, name))


def _params(command: click.Command) -> str:
    """Each parameter's settings, one a line: what help does not show (hidden options,
    types, envvars, flag values) is compared too. A computed default is named, not run."""
    lines = []
    for param in command.params:
        info = param.to_info_dict()
        if callable(param.default):
            info["default"] = "<computed>"
        lines.append(f"  {info!r}\n")
    return "".join(lines)


def help_tree() -> str:
    """``hashmatch [PATH...] --help`` of every command, each under a ``=== PATH`` line,
    then its parameters' settings."""
    from hashmatch.server.cli import cli

    runner = CliRunner()
    parts = []
    for path in command_paths(cli):
        command = cli
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        args = [*path, "--help"]
        result = runner.invoke(cli, args, prog_name="hashmatch", env={"COLUMNS": WIDTH})
        if result.exit_code != 0:
            raise RuntimeError(f"hashmatch {' '.join(path)} --help: {result.output}")
        parts.append(f"=== hashmatch {' '.join(path)}".rstrip() + "\n" + result.output)
        parts.append(f"--- params\n{_params(command)}")
    return "".join(parts)


if __name__ == "__main__":
    print(help_tree(), end="")
