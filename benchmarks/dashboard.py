"""Dashboard and report at scale; prints JSON lines.

A real smoke run (2 neurons, 2 iterations) is made, then copied into runs of 2,048 and 50 units
whose every unit repeats the real neurons' events (same images, hard links). Measured with
Streamlit's AppTest (the app's own scripts, in process): the Layer page's first render with
2,048 units, switching neuron on Overview; and `report --format html` of the 50-unit run (size,
seconds). Run: `uv run python benchmarks/dashboard.py` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smoke_run(work: Path) -> Path:
    from typer.testing import CliRunner

    from nacosae.cli import app
    from nacosae.config import settings

    os.environ["NACOSAE_HOME"] = str(work / "home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    settings.cache_clear()
    args = ["explain", "--preset", "smoke", "--neurons", "0,1", "--n-iters", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(work / "source")])
    assert result.exit_code == 0, result.output
    return next((work / "source").iterdir())


def scaled_copy(source: Path, runs: Path, units: int) -> Path:
    """`source` with `units` neurons, each a copy of a real neuron's events and summary."""
    target = runs / f"{source.name[:15]}_tiny_cnn_avgpool_n0-{units - 1}"
    shutil.copytree(source, target, copy_function=os.link)
    record = json.loads((source / "run.json").read_text())
    summary = json.loads((source / "summary.json").read_text())
    events = [json.loads(line) for line in (source / "events.jsonl").read_text().splitlines()]
    real = sorted(summary["neurons"])
    record["neurons"] = list(range(units))
    summary["neurons"] = {str(n): summary["neurons"][real[n % len(real)]] for n in range(units)}
    lines = []
    for n in range(units):
        model = int(real[n % len(real)])
        lines += [json.dumps({**e, "neuron": n}) for e in events if e["neuron"] == model]
    for name, text in (
        ("run.json", json.dumps(record)),
        ("summary.json", json.dumps(summary)),
        ("events.jsonl", "\n".join(lines) + "\n"),
    ):
        (target / name).unlink()
        (target / name).write_text(text)
    return target


def timed(action) -> float:  # noqa: ANN001 - a callable
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    from streamlit.testing.v1 import AppTest

    from nacosae import progress
    from nacosae.report import export
    from nacosae.report.runs import load_run

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        source = smoke_run(work)
        big = scaled_copy(source, work / "runs2048", 2048)
        os.environ["NACOSAE_DASHBOARD_RUNS"] = str(big.parent)
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
        at.session_state["run_id"] = big.name
        at.run()
        first = timed(lambda: at.switch_page("pages/4_Layer.py").run())
        rows = len(at.dataframe[0].value)
        at.switch_page("app.py").run()
        switch = timed(lambda: at.sidebar.selectbox(key="neuron_pick").select(1500).run())
        print(json.dumps({"figure": "layer_view_first_render_s", "units": rows, "value": first}))
        print(json.dumps({"figure": "overview_switch_neuron_s", "units": 2048, "value": switch}))
        mid = scaled_copy(source, work / "runs50", 50)
        run = load_run(mid)
        html: list[str] = []
        workers = os.cpu_count() or 1  # as `nacosae report` draws them
        seconds = timed(lambda: html.append(export.to_html([run], workers=workers)))
        size = len(html[0].encode())
        print(
            json.dumps(
                {"figure": "html_report_50_units", "megabytes": size / 1e6, "s": seconds,
                 "workers": workers}
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
