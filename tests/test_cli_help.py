"""Every command's --help renders: its examples stand apart from the prose above them."""

from collections.abc import Iterator

import click
from click.testing import CliRunner

from hashmatch.server.cli import cli


def _commands(command: click.Command, path: list[str]) -> Iterator[list[str]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, [*path, name])


def test_every_help_example_follows_a_blank_line_and_keeps_its_lines():
    """`remote ingest --help` printed "Exits 1 when ... rejected." and "Example:" as one
    paragraph (no blank line, no \\b): the example read as part of the sentence."""
    runner = CliRunner()
    checked = 0
    for path in _commands(cli, []):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("Example"):
                checked += 1
                assert not lines[i - 1].strip(), (" ".join(path), lines[i - 1])
                assert lines[i + 1].strip().startswith("hashmatch "), (" ".join(path), lines[i + 1])
    assert checked >= 5
