"""The `nacosae` command line: a thin Typer shell over the library.

Errors are mapped to exit codes here and only here: a `NacosaeError` is one red line plus a
hint and exit 1; Ctrl-C exits 130 after saying that a rerun resumes; usage errors are Click's
own (exit 2). Command modules import heavy libraries inside their functions so that
`nacosae --help` stays fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

from nacosae import __version__, progress
from nacosae.errors import NacosaeError

DEBUG_HINT = "set NACOSAE_DEBUG=1 for the traceback"

app = typer.Typer(
    name="nacosae",
    help="Explain the units of vision models in words.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _debug() -> bool:
    return os.environ.get("NACOSAE_DEBUG", "") not in ("", "0")


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command with nacosae's error-to-exit-code mapping."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NacosaeError as err:
            if _debug():
                raise
            progress.error(str(err), DEBUG_HINT)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            progress.error("interrupted: finished work is saved; rerun the same command to resume")
            raise typer.Exit(130) from None

    return run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nacosae {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Explain the units of vision models in words."""
    progress.configure(quiet=quiet, verbose=verbose)


def _register() -> None:
    from nacosae.cli import controls, dashboard, download, explain, report

    download.download_app.command("imagenet")(guarded(download.imagenet))
    download.download_app.command("models")(guarded(download.models))
    app.add_typer(download.download_app, name="download")
    app.command("controls")(guarded(controls.controls))
    app.command("explain")(guarded(explain.explain))
    app.command("report")(guarded(report.report))
    app.command("dashboard")(guarded(dashboard.dashboard))


_register()


def main() -> None:
    """Console-script entry point."""
    app()
