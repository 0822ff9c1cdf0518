"""Dashboard and report at scale; prints JSON lines.

A real smoke run (2 neurons, 2 iterations) is made, then copied into runs of 2,048 and 50 units
whose every unit repeats the real neurons' events (same images, hard links). Measured with
Streamlit's AppTest (the app's own scripts, in process): the Layer page's first render with
2,048 units, switching neuron on Overview; the same in a real headless Chromium (Playwright);
and `report --format html` of the 50-unit run (size, seconds).
Run: `uv run python benchmarks/dashboard.py` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scaled_runs import scaled_copy  # noqa: E402


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


def timed(action) -> float:  # noqa: ANN001 - a callable
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def in_browser(runs: Path) -> dict[str, float]:
    """Seconds a real headless Chromium (Playwright, Debian's chromium) waits for: Overview's
    first render, the Layer page, switching neuron from the Layer page's click-through."""
    import shutil
    import socket
    import subprocess

    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "nacosae", "dashboard", str(runs), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds: dict[str, float] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.monotonic() + 90
            while True:  # the server takes a few seconds to listen
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            heading = page.get_by_role("heading", name="Neuron 0:")
            seconds["overview_first_render_s"] = timed(
                lambda: expect(heading).to_be_visible(timeout=120_000)
            )
            sidebar = page.get_by_test_id("stSidebar")

            def after(click, heading):  # noqa: ANN001, ANN202 - from the click to the render
                return timed(lambda: (click(), expect(heading).to_be_visible()))

            seconds["layer_first_render_s"] = after(
                sidebar.get_by_role("link", name="Layer").click,
                page.get_by_text("2048 of 2048 units"),
            )
            page.get_by_role("combobox", name="Open unit").click()
            page.keyboard.type("1500")
            page.get_by_role("option", name="1500", exact=True).click()
            seconds["layer_to_overview_s"] = after(
                page.get_by_role("button", name="Open in Overview").click,
                page.get_by_role("heading", name="Neuron 1500:"),
            )
            sidebar.get_by_role("combobox", name="Neuron").click()
            page.keyboard.type("700")
            seconds["overview_switch_neuron_s"] = after(
                page.get_by_role("option", name="700", exact=True).click,
                page.get_by_role("heading", name="Neuron 700:"),
            )
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return seconds


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
        for figure, value in in_browser(big.parent).items():
            print(json.dumps({"figure": f"browser_{figure}", "units": 2048, "value": value}))
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
