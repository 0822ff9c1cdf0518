"""`nacosae report`: what runs found, as a table, CSV/JSON rows or a Markdown/HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from nacosae import progress


def report(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(help="Runs directory \\[default: SAVE_DIR].", show_default=False),
    ] = None,
    run: Annotated[
        list[str] | None, typer.Option("--run", help="Only this run id (repeatable).")
    ] = None,
    format: Annotated[
        Literal["table", "csv", "json", "md", "html"],
        typer.Option("--format", help="What to write (csv and json have the fixed columns)."),
    ] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    images: Annotated[
        Literal["auto", "embed", "files"],
        typer.Option(
            help="md/html images: embed (one self-contained file) or files (a folder beside "
            "--out, linked relatively); auto: files for md with --out, else embed."
        ),
    ] = "auto",
    novelty: Annotated[
        Path | None,
        typer.Option(
            help="md/html: an `evaluate --novelty` CSV, shown beside the share of final "
            "concepts that are class names.",
            show_default=False,
        ),
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            "--include-smoke/--exclude-smoke",
            help="List runs of the smoke preset (marked as such).",
            metavar="",
        ),
    ] = True,
) -> None:
    """Export what runs found (one row per run and neuron; CSV starts with neuron,concept)."""
    from nacosae.config import settings, writable_folder
    from nacosae.errors import NacosaeError
    from nacosae.report import export
    from nacosae.report.runs import list_runs

    directory = runs_dir or settings().save_dir
    if not Path(directory).is_dir():
        raise NacosaeError(
            f"runs directory {directory} does not exist: pass RUNS_DIR or set SAVE_DIR"
        )
    for run_id in run or []:
        if not (Path(directory) / run_id).is_dir():
            raise NacosaeError(f"no run {run_id!r} in {directory}")
    if out is not None:
        writable_folder(Path(out).expanduser().parent, "--out's folder")
    if images == "files" and out is None:
        raise typer.BadParameter("needs --out (the images go beside it)", param_hint="--images")
    if novelty is not None and format not in ("md", "html"):
        raise typer.BadParameter("goes with --format md or html", param_hint="--novelty")
    from nacosae.report.analyses import read_novelty

    novel = read_novelty(novelty) if novelty is not None else None
    runs = [r for r in list_runs(Path(directory), run) if smoke or not r.is_smoke]
    if format == "table" and out is None:
        _print_table(runs)
        return
    if format in ("md", "html"):
        use_files = images == "files" or (images == "auto" and format == "md" and out is not None)
        sink = export.ImageSink()
        if use_files:
            folder = Path(out).expanduser().with_name(Path(out).stem + "_files")  # type: ignore[arg-type]
            sink = export.ImageSink(folder, f"{folder.name}/")
        import os

        render = export.to_markdown if format == "md" else export.to_html
        text = render(runs, sink, workers=os.cpu_count() or 1, novelty=novel)
    else:
        text = {"table": _plain_table, "csv": export.to_csv, "json": export.to_json}[format](runs)
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
    "note",
)


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _table_cells(runs: list) -> list[list[str]]:
    from nacosae.report.runs import rows

    cells = []
    for row in rows(runs):
        notes = ["smoke: meaningless" for _ in [0] if "smoke" in (row["preset"] or "")]
        notes += [row[k] for k in ("note", "error", "warnings") if row[k]]
        row = {**row, "note": "; ".join(notes) or None}
        cells.append([_cell(row.get(c)) for c in TABLE_COLUMNS])
    return cells


def _plain_table(runs: list) -> str:
    """The table as aligned plain text (files, pipes, and tables too big for rich)."""
    return _aligned(_table_cells(runs))


def _aligned(cells: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _print_table(runs: list) -> None:
    from rich.console import Console
    from rich.table import Table

    cells = _table_cells(runs)
    out = Console()  # the table is the command's output: stdout, full width when piped
    if not out.is_terminal:
        out = Console(width=240)
    if len(cells) > RICH_ROW_LIMIT:
        typer.echo(_aligned(cells), nl=False)
        return
    table = Table(title=f"{len(runs)} runs")
    for column in TABLE_COLUMNS:
        table.add_column(column, overflow="fold")  # wrap long ids instead of cutting them
    for row in cells:
        table.add_row(*row)
    out.print(table)
