"""The `nacosae` command line: a thin Typer shell over the library.

Errors are mapped to exit codes here and only here: a `NacosaeError`, or a file system error
(permission, a file where a folder should be, a full disk), is one red line plus a hint and exit
1; Ctrl-C and SIGTERM exit 130 after saying how to continue (the exact `--resume` command for a
run); usage errors, bad option values included, are Click's own (exit 2, listing the choices).
Command modules import heavy libraries inside their functions so that `nacosae --help` stays
fast.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup, TyperOption

from nacosae import __version__, progress
from nacosae.errors import Interrupted, NacosaeError

DEBUG_HINT = "set NACOSAE_DEBUG=1 for the traceback"


def _type_column(option: TyperOption, ctx: click.Context) -> str | None:
    """What the help's type column shows: choices and numbers only. A flag's `<bool>` (Typer
    shows it for Click's own --help) and `<str>`/`<path>` say nothing the help text does not,
    and widen the column by a third of the screen."""
    shown = _typer_type_column(option, ctx)
    if option.is_flag or shown in ("<str>", "<path>", "<bool>"):
        return None
    return shown


_typer_type_column = TyperOption.display_type_rich
TyperOption.display_type_rich = _type_column  # type: ignore[method-assign]

BARE_RAY = "auto"  # what a bare `--ray` means: the running cluster (`ray start`, `serve`)


class NacosaeGroup(TyperGroup):
    """The command group, reading a bare `--ray` (at the end, or before another option) as
    `--ray auto`: Ray users type `--ray`, and a Click option cannot have an optional value."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, with_bare_ray(args))


def with_bare_ray(args: list[str]) -> list[str]:
    found = list(args)
    for i, arg in enumerate(found):
        if arg == "--ray" and (i + 1 == len(found) or found[i + 1].startswith("-")):
            found.insert(i + 1, BARE_RAY)
    return found


app = typer.Typer(
    cls=NacosaeGroup,
    name="nacosae",
    help="Explain the units of vision models in words.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _debug() -> bool:
    return os.environ.get("NACOSAE_DEBUG", "") not in ("", "0")


def guarded(
    command: Callable[..., Any], on_interrupt: str = "finished work is kept"
) -> Callable[..., Any]:
    """Run a command with nacosae's error-to-exit-code mapping; `on_interrupt` says how to go on
    after Ctrl-C or SIGTERM (unless the library raised `Interrupted` with its own hint)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return command(*args, **kwargs)
        except NacosaeError as err:
            if _debug():
                raise
            progress.error(str(err), DEBUG_HINT)
            raise typer.Exit(1) from None
        except OSError as err:
            if _debug() or err.errno not in FILE_SYSTEM_ERRORS:
                raise
            progress.error(file_system_message(err), DEBUG_HINT)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as stop:
            hint = stop.hint if isinstance(stop, Interrupted) else on_interrupt
            progress.error(f"interrupted: {hint}")
            raise typer.Exit(130) from None

    return run


FILE_SYSTEM_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "a folder stands where a file is needed",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def file_system_message(err: OSError) -> str:
    where = err.filename or "a file"
    return (
        f"cannot write or read {where}: {FILE_SYSTEM_ERRORS[err.errno]}; choose another "
        "location (--out, SAVE_DIR, NACOSAE_HOME) or free space, then rerun"
    )


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job, `kill`) stops a command like Ctrl-C does, so that
    runs are marked interrupted and their files stay whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nacosae {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version.", metavar=""
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging.", metavar="")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars.", metavar="")
    ] = False,
) -> None:
    """Explain the units of vision models in words."""
    progress.configure(quiet=quiet, verbose=verbose)


def _register() -> None:
    from nacosae.cli import (
        controls,
        dashboard,
        download,
        evaluate,
        explain,
        import_runs,
        report,
        serve,
    )

    rerun = "rerun the same command to continue"
    download.download_app.command("imagenet")(
        guarded(download.imagenet, f"images already written are kept; {rerun}")
    )
    download.download_app.command("models")(guarded(download.models))
    app.add_typer(download.download_app, name="download")
    app.command("controls")(
        guarded(controls.controls, f"the shards written so far are kept; {rerun}")
    )
    app.command("explain")(guarded(explain.explain))
    app.command("evaluate")(
        guarded(evaluate.evaluate, f"rendered concepts are kept in the concept cache; {rerun}")
    )
    app.command("top-images")(guarded(evaluate.top_images))
    app.command("report")(guarded(report.report))
    app.command("import-runs")(guarded(import_runs.import_runs))
    app.command("dashboard")(guarded(dashboard.dashboard))
    app.command("serve")(guarded(serve.serve))


_register()


def main() -> None:
    """Console-script entry point."""
    app()
