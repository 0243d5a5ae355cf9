"""The click class of the ``hashmatch remote`` verbs: a connection option given after
the verb is named as ``remote``'s, with the command line that works.

Why: ``scan``, ``rescan`` and ``mirror`` take ``--server``, ``--token-file``, ``--ca``
... after their verb, so ``hashmatch remote health --server HOST:PORT`` is what a new
user types next; click answered only ``No such option '--server'``, and the verb's
``--help`` lists no such option (it is the ``remote`` group's).
"""

from __future__ import annotations

import shlex

import click


def _group_options(ctx: click.Context) -> dict[str, click.Option]:
    """The ``remote`` group's options by each of their names (``--server``, ...)."""
    group = ctx.parent.command if ctx.parent is not None else None
    if group is None:
        return {}
    return {
        name: param
        for param in group.params
        if isinstance(param, click.Option)
        for name in param.opts
    }


def moved_before_verb(verb: str, args: list[str], options: dict[str, click.Option]) -> list[str]:
    """``args`` of ``verb`` with the group's options (and their values) moved before it:
    the command line that means what was typed."""
    before: list[str] = []
    after: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            after += [arg, *rest]
            break
        name = arg.split("=", 1)[0]
        option = options.get(name)
        if option is None:
            after.append(arg)
            continue
        before.append(arg)
        if not option.is_flag and "=" not in arg:
            value = next(rest, None)
            if value is not None:
                before.append(value)
    return [*before, verb, *after]


class RemoteVerb(click.Command):
    """A ``remote`` verb whose unknown option, when it is one of ``remote``'s own,
    is refused saying where it goes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        original = list(args)  # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            options = _group_options(ctx)
            if exc.option_name in options:
                verb = ctx.info_name or self.name or ""
                fixed = shlex.join(moved_before_verb(verb, original, options))
                exc.message = (
                    f"No such option {exc.option_name!r} for `remote {verb}`: it is an"
                    f" option of `hashmatch remote`, given before the verb:"
                    f" hashmatch remote {fixed}"
                )
                exc.possibilities = None
            raise


class RemoteGroup(click.Group):
    """``hashmatch remote``: its verbs are :class:`RemoteVerb`."""

    command_class = RemoteVerb
