"""`nacosae report`: what runs found, as a table, CSV/JSON rows or a Markdown/HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nacosae import progress

FORMATS = ("table", "csv", "json", "md", "html")


def report(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(help="Runs directory \\[default: SAVE_DIR].", show_default=False),
    ] = None,
    run: Annotated[
        list[str] | None, typer.Option("--run", help="Only this run id (repeatable).")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv, json, md or html.")] = (
        "table"
    ),
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export what runs found (one row per run and neuron; CSV starts with neuron,concept)."""
    from nacosae.config import settings
    from nacosae.errors import NacosaeError
    from nacosae.report import export
    from nacosae.report.runs import list_runs

    if format not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    directory = runs_dir or settings().save_dir
    if not Path(directory).is_dir():
        raise NacosaeError(
            f"runs directory {directory} does not exist: pass RUNS_DIR or set SAVE_DIR"
        )
    for run_id in run or []:
        if not (Path(directory) / run_id).is_dir():
            raise NacosaeError(f"no run {run_id!r} in {directory}")
    runs = list_runs(Path(directory), run)
    if format == "table":
        _print_table(runs)
        return
    text = {
        "csv": export.to_csv,
        "json": export.to_json,
        "md": export.to_markdown,
        "html": export.to_html,
    }[format](runs)
    if out is None:
        typer.echo(text, nl=False)
        return
    from nacosae.store.atomic import atomic_write_text

    atomic_write_text(out, text)
    progress.info(f"wrote {out}")


RICH_ROW_LIMIT = 200  # rich lays out big tables slowly; beyond this, plain aligned text
TABLE_COLUMNS = (
    "run_id",
    "model",
    "layer",
    "neuron",
    "concept",
    "score",
    "auc",
    "mad",
    "mean",
    "iterations",
    "status",
)


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _print_table(runs: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from nacosae.report.runs import rows

    cells = [[_cell(row.get(c)) for c in TABLE_COLUMNS] for row in rows(runs)]
    out = Console()  # the table is the command's output: stdout, full width when piped
    if not out.is_terminal:
        out = Console(width=240)
    if len(cells) > RICH_ROW_LIMIT:
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(TABLE_COLUMNS)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
        typer.echo("\n".join(lines))
        return
    table = Table(title=f"{len(runs)} runs")
    for column in TABLE_COLUMNS:
        table.add_column(column, overflow="fold")  # wrap long ids instead of cutting them
    for row in cells:
        table.add_row(*row)
    out.print(table)
