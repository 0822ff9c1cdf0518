"""`nacosae import-runs`: the original project's run folders as nacosae run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nacosae import progress


def import_runs(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="The original's run folders, or its save directory (every run inside).",
            show_default=False,
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Runs directory \\[default: SAVE_DIR].")] = None,
) -> None:
    """Read the original project's runs (params.txt, histories, images) for report, dashboard
    and evaluate."""
    from nacosae.config import settings, writable_folder
    from nacosae.store.original_runs import import_runs as run_import

    target = Path(out or settings().save_dir).expanduser()
    writable_folder(target, "the runs directory (--out or SAVE_DIR)")
    report = run_import(sources, target)
    for line in report.skipped:
        progress.warn(f"skipped {line}")
    for path in report.imported:
        typer.echo(path)
    progress.info(
        f"[green]imported[/green] {len(report.imported)} run(s) into {target}"
        + (f"; {len(report.skipped)} skipped" if report.skipped else "")
    )
    if (
        not report.imported
        and report.skipped
        and not all("already imported" in line for line in report.skipped)
    ):
        raise typer.Exit(1)
