"""The one place that talks to the terminal: messages, warnings and progress bars (rich).

`--quiet` turns progress bars and info messages off; warnings and errors still show.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

log = logging.getLogger("nacosae")


@dataclass
class _UI:
    quiet: bool = False
    verbose: bool = False


ui = _UI()
console = Console(stderr=True, highlight=False)


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set verbosity once per process (called by the CLI's global options)."""
    ui.quiet, ui.verbose = quiet, verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    log.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.propagate = False


def quiet_libraries() -> None:
    """Silence the progress bars and advisories of the model libraries (under --quiet)."""
    import diffusers
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def info(message: str) -> None:
    if not ui.quiet:
        console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def error(message: str, hint: str | None = None) -> None:
    console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    if hint:
        console.print(Text(hint, style="dim"), soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '412.3 img/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:,.1f} {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(unit: str = "it") -> Iterator[Progress]:
    """A progress display with count, rate and ETA; invisible under --quiet."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=ui.quiet,
        transient=False,
    )
    with bar:
        yield bar
