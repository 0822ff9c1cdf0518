"""The `--ray` options shared by explain, evaluate and controls."""

from __future__ import annotations

from typing import Annotated

import typer

RayOption = Annotated[
    str | None,
    typer.Option(
        help="Run the models on Ray workers: local (start a cluster here), auto (the running "
        "one, and `nacosae serve`'s warm workers; what a bare --ray means), or an address.",
        show_default=False,
    ),
]
RayWorkersOption = Annotated[
    int | None,
    typer.Option(
        help="Worker actors to start \\[default: serve's, else one per GPU or CPU slot].",
        show_default=False,
    ),
]
