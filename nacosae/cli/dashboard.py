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
    address: Annotated[
        str,
        typer.Option(
            help="Address to listen on: this machine only by default; 0.0.0.0 for every "
            "interface (anyone who can reach the machine sees the runs)."
        ),
    ] = "localhost",
) -> None:
    """Browse runs in the browser (Streamlit): overview, images, reasoning, compare."""
    import os
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
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    raise typer.Exit(serve_until_stopped(command, env))


def serve_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server as a child that never outlives this command: Ctrl-C or SIGTERM
    here stops it, and on Linux the kernel stops it if this process is killed outright."""
    import subprocess
    import sys

    child = subprocess.Popen(
        command, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None
    )
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
