"""The one place that talks to the terminal: messages, warnings and progress bars (rich).

`--quiet` turns progress bars and info messages off; warnings and errors still show. When the
output is not a terminal (a pipe, a log file, a batch job), bars become plain lines: one per
tenth of the work, never a redrawn or wrapped line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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
console = Console(stderr=True, highlight=False)  # messages, warnings, progress
results = Console(highlight=False)  # what a command found: tables a user may redirect


def result(renderable: Any) -> None:
    """Print a command's result (a table) on stdout, so `> file` captures it; messages and
    progress stay on stderr."""
    results.print(renderable)


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
    """Silence the progress bars and advisories of the model libraries: the hub's at once,
    transformers' and diffusers' now if they are imported, else when they are (their verbosity
    comes from the environment at import; the loaders call `calm_libraries` after importing).
    Importing them here would cost seconds where they are never used (a controls worker)."""
    import sys

    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers reads this setting when it is imported
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    if "diffusers" in sys.modules:
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()


def calm_libraries() -> None:
    """Silence the model libraries' own progress bars and advisories ("Loading pipeline
    components", "Converting and de-quantizing GGUF tensors"): nacosae's own progress says what
    is happening, and theirs garble logs. `-v/--verbose` keeps them."""
    if not ui.verbose:
        quiet_libraries()


def debug(message: str) -> None:
    """A detail for `-v/--verbose` (model loads, cache rounds, phase times), on stderr."""
    log.debug(message)


def info(message: str) -> None:
    if not ui.quiet:
        console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), message), soft_wrap=True)


def error(message: str, hint: str | None = None) -> None:
    console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    if hint:
        console.print(Text(hint, style="dim"), soft_wrap=True)


def human_bytes(n: float) -> str:
    """A size in binary units: `512 B`, `65.8 KiB`, `1.2 GiB` (`unlimited` for infinity)."""
    if n == float("inf"):
        return "unlimited"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class RateColumn(ProgressColumn):
    """Items per second, e.g. '412.3 img/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:,.1f} {self.unit}/s", style="cyan")


@dataclass
class _PlainTask:
    description: str
    total: float | None
    completed: float = 0.0
    shown_tenth: int = -1


@dataclass
class PlainProgress:
    """The calls of rich's Progress that nacosae uses, printing plain lines (non-terminals)."""

    unit: str
    tasks: list[_PlainTask] = field(default_factory=list)

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        self.tasks.append(_PlainTask(description, total, completed))
        return len(self.tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, completed=self.tasks[task].completed + advance)

    def update(self, task: int, **changes: Any) -> None:
        state = self.tasks[task]
        for key in ("description", "total", "completed"):
            if changes.get(key) is not None:
                setattr(state, key, changes[key])
        if not state.total:
            return
        tenth = int(10 * state.completed / state.total)
        if tenth > state.shown_tenth:
            state.shown_tenth = tenth
            done = f"{state.completed:,.0f}/{state.total:,.0f} {self.unit}"
            console.print(f"{state.description}: {done}", soft_wrap=True, highlight=False)


@contextmanager
def progress_bar(unit: str = "it") -> Iterator[Any]:
    """A progress display with count, rate and ETA; plain lines when the output is not a
    terminal; nothing under --quiet."""
    if not console.is_terminal and not ui.quiet:
        yield PlainProgress(unit)
        return
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


@contextmanager
def phase_progress(phases: int, label: str) -> Iterator[Callable[[int, str], None]]:
    """Progress through a run's phases, fitting 80 columns: `report(done, detail)`. A bar on a
    terminal; one plain line per phase otherwise."""
    if ui.quiet:
        yield lambda done, detail: None
        return
    if not console.is_terminal:

        def line(done: int, detail: str) -> None:
            console.print(f"{label}: phase {done}/{phases}, {detail}", soft_wrap=True)

        yield line
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with bar:
        task = bar.add_task(label, total=phases)

        def update(done: int, detail: str) -> None:
            bar.update(task, completed=done, description=f"{label} | {detail}"[:44])

        yield update
