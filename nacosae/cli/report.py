"""`nacosae report`: what runs found, as a table, CSV/JSON rows or a Markdown/HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nacosae import progress

FORMATS = ("table", "csv", "json", "md", "html")


def report(
    runs_dir: Annotated[
        Path | None, typer.Argument(help="Runs directory [default: SAVE_DIR].", show_default=False)
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


def _print_table(runs: list) -> None:
    from rich.table import Table

    from nacosae.report.runs import rows

    table = Table(title=f"{len(runs)} runs")
    columns = ("run_id", "model", "layer", "neuron", "concept", "score", "auc", "mad", "mean")
    for column in (*columns, "iterations", "status"):
        table.add_column(column, overflow="fold")  # wrap long ids instead of cutting them
    for row in rows(runs):
        cells = [row.get(c) for c in (*columns, "iterations", "status")]
        table.add_row(
            *(f"{c:.4f}" if isinstance(c, float) else "-" if c is None else str(c) for c in cells)
        )
    from rich.console import Console

    out = Console()  # the table is the command's output: stdout, full width when piped
    if not out.is_terminal:
        out = Console(width=240)
    out.print(table)
