"""Which options the user of a command gave (presets fill in only the others)."""

from __future__ import annotations

import typer

BY_USER = ("COMMANDLINE", "ENVIRONMENT")  # click's ParameterSource names


def options_given(context: typer.Context, sources: tuple[str, ...] = BY_USER) -> set[str]:
    """The parameters of `context` whose value came from `sources` (not from a default)."""
    return {
        name
        for name in context.params
        if getattr(context.get_parameter_source(name), "name", None) in sources
    }
