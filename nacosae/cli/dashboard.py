"""`nacosae dashboard`: start the Streamlit app that browses runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def dashboard_app() -> Path:
    """The app script: packaged (wheel) or the repository's dashboard/ folder."""
    here = Path(__file__).resolve()
    for candidate in (
        here.parents[1] / "dashboard" / "app.py",
        here.parents[2] / "dashboard" / "app.py",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("dashboard/app.py is missing from this installation")


def dashboard(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(help="Runs directory \\[default: SAVE_DIR].", show_default=False),
    ] = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
) -> None:
    """Browse runs in the browser (Streamlit): overview, images, reasoning, compare."""
    import os
    import subprocess
    import sys

    from nacosae.config import settings
    from nacosae.errors import NacosaeError
    from nacosae.report.browse import RUNS_ENV

    directory = Path(runs_dir or settings().save_dir).expanduser().resolve()
    if not directory.is_dir():
        raise NacosaeError(
            f"runs directory {directory} does not exist: pass RUNS_DIR or set SAVE_DIR"
        )
    env = {**os.environ, RUNS_ENV: str(directory)}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(dashboard_app()),
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    raise typer.Exit(subprocess.call(command, env=env))
