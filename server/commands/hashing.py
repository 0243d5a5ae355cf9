"""CLI verbs for this area (filled in by its issue's work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
