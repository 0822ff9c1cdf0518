"""The Streamlit dashboard: every page through streamlit's AppTest, and one real browser."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).parents[1] / "dashboard"


def done_run(runs_dir: Path) -> str:
    return next(runs_dir.glob("*n0-5")).name


def app(page: str, runs_dir: Path, monkeypatch, run_id: str | None = None) -> AppTest:
    monkeypatch.setenv("NACOSAE_DASHBOARD_RUNS", str(runs_dir))
    at = AppTest.from_file(str(ROOT / page), default_timeout=60)
    if run_id:
        at.session_state["run_id"] = run_id
    return at.run()


def texts(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("header", "markdown", "caption", "info", "error", "warning")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def test_overview_selects_a_run_and_switches_neuron(runs_dir, monkeypatch):
    import json

    run_id = done_run(runs_dir)
    summary = json.loads((runs_dir / run_id / "summary.json").read_text())["neurons"]
    at = app("app.py", runs_dir, monkeypatch)
    at.sidebar.selectbox(key="run_id_pick").select(run_id).run()
    assert not at.exception
    assert at.header[0].value == f"Neuron 0: {summary['0']['best']['concept']}"
    at.sidebar.selectbox(key="neuron_pick").select(5).run()
    assert at.header[0].value == f"Neuron 5: {summary['5']['best']['concept']}"
    assert len(at.dataframe) == 3  # the search, the final history, the parameters
    assert [b.label for b in at.get("download_button")] == ["CSV", "JSON"]
    assert at.button(key=f"html_{run_id}").label == "Prepare HTML report"


def test_every_sidebar_choice_holds_across_pages(runs_dir, monkeypatch):
    run_id = done_run(runs_dir)
    at = app("app.py", runs_dir, monkeypatch)
    at.sidebar.selectbox(key="filter_Status_pick").select("done").run()
    at.sidebar.selectbox(key="run_id_pick").select(run_id).run()
    at.sidebar.selectbox(key="neuron_pick").select(5).run()
    for page in ("pages/1_Images.py", "pages/2_Reasoning.py", "app.py"):  # app.py: Overview
        at.switch_page(page).run()
        assert not at.exception
        assert at.sidebar.selectbox(key="neuron_pick").value == 5, page
        assert at.sidebar.selectbox(key="run_id_pick").value == run_id
        assert at.sidebar.selectbox(key="filter_Status_pick").value == "done"
    assert at.header[0].value.startswith("Neuron 5:")
    at.switch_page("pages/3_Compare.py").run()
    assert at.multiselect[0].value[0] == f"{run_id} / 5"  # Compare starts from the choice


def test_the_html_report_is_built_only_on_request_and_once(runs_dir, monkeypatch):
    from nacosae.report import export

    built = []
    real = export.to_html
    monkeypatch.setattr(export, "to_html", lambda runs: built.append(1) or real(runs))
    run_id = done_run(runs_dir)
    at = app("app.py", runs_dir, monkeypatch, run_id)
    at.sidebar.selectbox(key="neuron_pick").select(5).run()
    assert built == []  # clicks that do not ask for it build nothing
    at.button(key=f"html_{run_id}").click().run()
    assert [b.label for b in at.get("download_button")] == ["CSV", "JSON", "HTML"]
    at.sidebar.selectbox(key="neuron_pick").select(0).run()
    assert len(built) == 1 and not at.exception  # kept for this state of the run


def test_the_status_filter_follows_the_runs_own_files(runs_dir, tmp_path, monkeypatch):
    import json

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    at = app("app.py", runs, monkeypatch)
    statuses = at.sidebar.selectbox(key="filter_Status_pick").options
    assert "failed" in statuses
    records = {p: p.read_text() for p in runs.glob("*/run.json") if p.parent.name != "zz-corrupt"}
    failed = next(p for p, text in records.items() if json.loads(text)["status"] == "failed")
    record = json.loads(failed.read_text())
    before = runs.stat()
    failed.write_text(json.dumps({**record, "status": "done", "error": None}))
    os.utime(runs, ns=(before.st_atime_ns, before.st_mtime_ns))  # the runs folder: unchanged
    at.run()
    assert "failed" not in at.sidebar.selectbox(key="filter_Status_pick").options


def test_pages_are_named_titles_come_first_and_run_labels_stay_distinct(runs_dir, monkeypatch):
    from nacosae.report.browse import run_label

    at = app("app.py", runs_dir, monkeypatch)
    at.sidebar.selectbox(key="run_id_pick").select("zz-corrupt").run()
    first = at.main.children[0]
    assert first.type == "title" and first.value == "Overview"  # above the error box
    labels = at.sidebar.selectbox(key="run_id_pick").options  # as shown: run_label
    assert len({label[:18] for label in labels}) == len(labels)
    assert run_label("20261128-055210_resnet18_avgpool_n0-5") == (
        "n0-5 · 11-28 05:52:10 · resnet18_avgpool"
    )
    source = (ROOT / "common.py").read_text()
    assert 'title="Overview", default=True' in source


def test_filters_and_corrupt_run(runs_dir, monkeypatch):
    at = app("app.py", runs_dir, monkeypatch)
    at.sidebar.selectbox(key="run_id_pick").select("zz-corrupt").run()
    assert not at.exception
    assert "zz-corrupt cannot be read" in texts(at)
    at.sidebar.selectbox(key="filter_Status_pick").select("done").run()
    from nacosae.report.browse import run_label

    assert at.sidebar.selectbox(key="run_id_pick").options == [run_label(done_run(runs_dir))]


def test_empty_and_missing_runs_directory(tmp_path, monkeypatch):
    at = app("app.py", tmp_path, monkeypatch)
    assert "No runs in" in texts(at)
    at = app("app.py", tmp_path / "absent", monkeypatch)
    assert "No runs directory" in texts(at)


def test_images_page(runs_dir, monkeypatch):
    import json

    run_id = done_run(runs_dir)
    at = app("pages/1_Images.py", runs_dir, monkeypatch, run_id)
    assert not at.exception
    assert at.title[0].value == "Images"
    assert len(at.get("image")) >= 10  # one strip per scored concept
    best = json.loads((runs_dir / run_id / "summary.json").read_text())["neurons"]["0"]["best"]
    titles = [m.value for m in at.markdown]
    assert titles[0].startswith(f"**{best['concept']}** ★ best")  # by score: the best first
    scores = [float(t.split(" · ")[1].split()[1]) for t in titles]
    assert scores == sorted(scores, reverse=True)
    from nacosae.report.browse import image_activations, open_run

    run = open_run(str(runs_dir / run_id))
    event = next(e for e in run.events() if e.get("concept") == best["concept"])
    files = [run.path / f for f in event["images"]]
    values = image_activations(run, 0, best["concept"], files)
    assert all(v is not None for v in values)  # found through the hard links into the cache
    at.radio(key="image_order").set_value("in run order").run()
    in_order = [m.value for m in at.markdown]
    iterations = [int(t.split("iteration ")[1].split()[0]) for t in in_order]
    assert iterations == sorted(iterations)


def test_reasoning_page(runs_dir, monkeypatch):
    at = app("pages/2_Reasoning.py", runs_dir, monkeypatch, done_run(runs_dir))
    assert not at.exception
    assert len(at.expander) == 3  # 2 iterations + the summary
    assert "<answer>" in at.text[0].value and not at.code  # raw answers as plain text
    assert all(" · " in e.label or "no valid proposal" in e.label for e in at.expander)
    # iteration 1's prompt listed the initial concepts, best first, with their scores
    import json

    events = [
        json.loads(line)
        for line in (runs_dir / done_run(runs_dir) / "events.jsonl").read_text().splitlines()
    ]
    initial = sorted(
        (e for e in events if e["neuron"] == 0 and e["iteration"] == 0), key=lambda e: -e["score"]
    )
    shown = at.table[0].value
    assert list(shown["concept"]) == [e["concept"] for e in initial]
    assert list(shown["score"]) == [e["score"] for e in initial]
    summary = at.table[-1].value  # the summary step was shown the top 3
    assert len(summary) == 3


def test_compare_page(runs_dir, monkeypatch):
    at = app("pages/3_Compare.py", runs_dir, monkeypatch, done_run(runs_dir))
    assert not at.exception
    assert len(at.multiselect[0].value) >= 2
    assert len(at.dataframe) == 1
    assert {"metric", "seed", "status"} <= set(at.dataframe[0].value.columns)
    reference = Path(__file__).parent / "data" / "cosy_reference"
    files = sorted(reference.glob("*.csv"))
    at.text_area(key="compare_methods").input("\n".join(str(f) for f in files)).run()
    assert not at.exception
    tests = at.dataframe[1].value
    assert len(tests) == 6 and set(tests["test"]) <= {"paired t-test", "Wilcoxon signed-rank"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, up: bool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if (s.connect_ex(("127.0.0.1", port)) == 0) == up:
                return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_the_server_stops_with_its_command(runs_dir):
    """SIGTERM to `nacosae dashboard` (what a job scheduler sends) stops its Streamlit child
    too: nothing keeps the port. It listens on this machine's loopback only."""
    import signal

    import psutil

    port = free_port()
    command = subprocess.Popen(
        [sys.executable, "-m", "nacosae", "dashboard", str(runs_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port(port, up=True, seconds=90), "the dashboard did not start"
        listening = {
            c.laddr.ip
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert listening and listening <= {"127.0.0.1", "::1"}  # this machine only, by default
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=30) in (0, 130)
        assert wait_for_port(port, up=False, seconds=20), "the Streamlit child kept the port"
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_real_browser_keeps_the_choice_across_pages(runs_dir, tmp_path):
    """Headless Chromium, driven by Playwright, on a 50-neuron run made from a real smoke run:
    Overview shows neuron 0, the sidebar switches to neuron 37, and Images, Reasoning, Layer and
    Overview again all keep it. Prints how long each step took (timings are not asserted)."""
    import json

    from playwright.sync_api import expect, sync_playwright

    from tests.scaled_runs import scaled_copy

    run = scaled_copy(runs_dir / done_run(runs_dir), tmp_path / "runs", 50)
    best = json.loads((run / "summary.json").read_text())["neurons"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "nacosae", "dashboard", str(run.parent), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds: dict[str, float] = {}
    expect.set_options(timeout=30_000)  # a slow CI machine, not a slow page: timings are printed

    def timed(step: str, *actions) -> None:  # noqa: ANN002 - a click, then an expect(...)
        started = time.perf_counter()
        for action in actions:
            action()
        seconds[step] = round(time.perf_counter() - started, 2)

    try:
        assert wait_for_port(port, up=True, seconds=90), "the dashboard did not start"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            heading = page.get_by_role("heading", name=f"Neuron 0: {best['0']['best']['concept']}")
            timed("overview_first_render", lambda: expect(heading).to_be_visible(timeout=90_000))
            sidebar = page.get_by_test_id("stSidebar")
            picker = sidebar.get_by_role("combobox", name="Neuron")
            picker.click()
            page.keyboard.type("37")  # the option list is virtual: type to bring 37 into it
            wanted = f"Neuron 37: {best['37']['best']['concept']}"
            heading = page.get_by_role("heading", name=wanted)
            option = page.get_by_role("option", name="37", exact=True)
            timed("switch_neuron", option.click, expect(heading).to_be_visible)
            for name in ("Images", "Reasoning", "Layer", "Overview"):
                title = page.get_by_role("heading", name=name, exact=True)
                if name == "Overview":
                    title = page.get_by_role("heading", name=wanted)
                link = sidebar.get_by_role("link", name=name)
                timed(f"open_{name.lower()}", link.click, expect(title).to_be_visible)
                expect(picker).to_have_value("37")  # the choice held
                if name in ("Images", "Reasoning"):
                    expect(page.get_by_role("heading", name=wanted)).to_be_visible()
                if name == "Layer":
                    expect(page.get_by_text("50 of 50 units")).to_be_visible()
            expect(page.get_by_test_id("stException")).to_have_count(0)
            shot = Path(os.environ.get("NACOSAE_SCREENSHOT", tmp_path / "dashboard.png"))
            page.screenshot(path=shot)  # a real screenshot of the window (look at it when in doubt)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert wait_for_port(port, up=False, seconds=20), "the Streamlit child kept the port"
    print(json.dumps({"real_browser_seconds": seconds}))


def test_overview_says_what_the_unit_is_and_how_sure_we_are(runs_dir, tmp_path, monkeypatch):
    import json

    runs = tmp_path / "runs"
    run_id = done_run(runs_dir)
    shutil.copytree(runs_dir / run_id, runs / run_id)
    best = json.loads((runs / run_id / "summary.json").read_text())["neurons"]["5"]["best"]
    events = [
        json.loads(line) for line in (runs / run_id / "events.jsonl").read_text().splitlines()
    ]
    scored = [e for e in events if e["neuron"] == 5 and e.get("concept") == best["concept"]]
    metrics = max(scored, key=lambda e: e["score"])["metrics"]
    (runs / run_id / "evaluation").mkdir()
    (runs / run_id / "evaluation" / "evaluation.csv").write_text(
        f"neuron,concept,AUC,U1,p,MAD,source,rank\n5,{best['concept']},0.8125,1,0.01,1.5,x,1\n"
    )
    at = app("app.py", runs, monkeypatch, run_id)
    at.sidebar.selectbox(key="neuron_pick").select(5).run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["AUC"] == f"{metrics['auc']:.4f}" and shown["MAD"] == f"{metrics['mad']:.4f}"
    assert shown["control images"] == "36" and shown["held-out AUC"] == "0.8125"
    chance = [w.value for w in at.warning if "at or below chance" in w.value]
    assert bool(chance) == (metrics["auc"] <= 0.5)
    # the concept's renders, the top control images, three plots
    assert len(at.get("image")) == 5
    from nacosae.report.browse import open_run, top_control_images

    top = top_control_images(open_run(str(runs / run_id)), 5, k=8)
    assert len(top) == 8 and all(t.path.is_file() for t in top)
    settings = at.dataframe[-1].value
    assert "control strategy" in list(settings["setting"]) and "seed" in list(settings["setting"])


def test_layer_page_lists_every_unit_and_opens_one(runs_dir, monkeypatch):
    run_id = done_run(runs_dir)
    at = app("app.py", runs_dir, monkeypatch, run_id)
    at.switch_page("pages/4_Layer.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["neuron"]) == [0, 5] and "auc" in table.columns
    assert any("Across the runs of this layer" in h.value for h in at.subheader)
    assert "are control-class names (exact match" in texts(at)
    at.text_input(key="layer_filter").input("zzz-no-such-concept").run()
    assert len(at.dataframe[0].value) == 0
    at.text_input(key="layer_filter").input("").run()
    at.selectbox(key="layer_open").select(5).run()
    at.button(key="layer_go").click().run()
    assert not at.exception
    assert at.title[0].value == "Overview" and at.header[0].value.startswith("Neuron 5:")
