"""`nacosae report` on real runs of the smoke preset, plus failed, interrupted and corrupt runs."""

import csv
import io
import json
import re


def test_table_lists_every_run(invoke, runs_dir):
    result = invoke("report", runs_dir)
    assert result.exit_code == 0, result.output
    for status in ("done", "failed", "interrupted", "corrupt"):
        assert status in result.output


def test_csv_feeds_evaluate(invoke, runs_dir):
    result = invoke("report", runs_dir, "--format", "csv")
    assert result.exit_code == 0
    table = list(csv.DictReader(io.StringIO(result.output)))
    assert list(table[0])[:2] == ["neuron", "concept"]
    done = [r for r in table if r["status"] == "done"]
    assert sorted(r["neuron"] for r in done) == ["0", "5"]
    assert all(r["concept"] and 0 <= float(r["auc"]) <= 1 for r in done)
    assert float(done[0]["score"]) == float(done[0]["auc"])
    interrupted = [r for r in table if r["status"] == "interrupted"]
    assert [r["neuron"] for r in interrupted] == ["3"]  # best of its initial concepts so far
    assert interrupted[0]["concept"]
    assert {r["status"] for r in table} == {"done", "failed", "interrupted", "corrupt"}


def test_json_rows(invoke, runs_dir, tmp_path):
    out = tmp_path / "rows.json"
    result = invoke("report", runs_dir, "--format", "json", "--out", out)
    assert result.exit_code == 0
    rows = json.loads(out.read_text())
    assert {"neuron", "concept", "run_id", "auc", "mad", "iterations"} <= set(rows[0])


def test_html_is_one_self_contained_file(invoke, runs_dir, tmp_path):
    out = tmp_path / "report.html"
    result = invoke("report", runs_dir, "--format", "html", "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    sources = re.findall(r"""src=['"]([^'"]+)""", text)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert any(s.startswith("data:image/jpeg;base64,") for s in sources)  # thumbnails: JPEG
    assert "<link" not in text and "<script" not in text
    done = json.loads(next(runs_dir.glob("*n0-5/summary.json")).read_text())
    assert done["neurons"]["0"]["best"]["concept"] in text
    # every plot has a caption; the histogram names its metric; the contents link to headings
    assert text.count("<figure") == text.count("<figcaption>") > 0
    assert "best auc per neuron" in text and "the best auc so far" in text
    assert "minus the best initial" in text
    anchors = re.findall(r"href='#([^']+)'", text)
    assert anchors and all(f"id='{a}'" in text for a in anchors)
    summary_header = re.search(r"<h2 id='summary'>Summary</h2>\n<table><tr>(.*?)</tr>", text)
    assert "<th>metric</th>" in summary_header.group(1)
    assert "Reasoning, neuron 0" in text
    events = next(runs_dir.glob("*n0-5/events.jsonl")).read_text().splitlines()
    initial = [e["concept"] for e in map(json.loads, events) if e["iteration"] == 0]
    listed = re.search(r"shown: ([^<]*)", text).group(1)  # what iteration 1's prompt listed
    assert all(concept in listed for concept in initial[:3])
    assert "the control images that drive it most (" in text


def test_markdown_report_reads_as_text_with_image_files(invoke, runs_dir, tmp_path):
    result = invoke("report", runs_dir, "--format", "md")
    assert result.exit_code == 0
    assert result.output.startswith("# nacosae report")
    assert "### Neuron 0 of run" in result.output and "### Neuron 5 of run" in result.output
    out = tmp_path / "report.md"
    assert invoke("report", runs_dir, "--format", "md", "--out", out).exit_code == 0
    text = out.read_text()
    assert "base64" not in text and max(len(line) for line in text.splitlines()) < 2000
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((tmp_path / link).is_file() for link in links)
    assert all(link.startswith("report_files/") for link in links)
    assert any(link.endswith(".jpg") for link in links)
    refused = invoke("report", runs_dir, "--format", "md", "--images", "files")
    assert refused.exit_code == 2 and "--out" in refused.output


def test_run_filter_and_bad_input(invoke, runs_dir, tmp_path):
    run_id = next(runs_dir.glob("*n0-5")).name
    result = invoke("report", runs_dir, "--run", run_id, "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(result.output)))) == 2
    assert invoke("report", runs_dir, "--run", "nope").exit_code == 1
    missing = invoke("report", tmp_path / "absent")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert invoke("report", runs_dir, "--format", "pdf").exit_code == 2


def test_large_tables_print_as_plain_aligned_text(invoke, runs_dir, monkeypatch):
    from nacosae.cli import report

    monkeypatch.setattr(report, "RICH_ROW_LIMIT", 1)
    result = invoke("report", runs_dir)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == list(report.TABLE_COLUMNS)
    assert len(lines) == 1 + 5  # header, 2 neurons of the done run, 3 other runs
    assert "┃" not in result.output


def test_figures_drawn_in_processes_equal_those_drawn_in_process(runs_dir):
    from nacosae.report.export import render_panels
    from nacosae.report.runs import load_run

    run = load_run(next(runs_dir.glob("*n0-5")))
    events = run.events()
    jobs = [([e for e in events if e["neuron"] == n], run.neurons[n].curve, "auc") for n in (0, 5)]
    jobs = jobs * 3  # six figures: enough to use the pool
    assert render_panels(jobs, workers=2) == render_panels(jobs, workers=1)


def test_evaluations_beside_the_runs_are_not_taken_for_runs(invoke, runs_dir, tmp_path):
    import shutil

    from nacosae.report.browse import index_runs

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs, symlinks=True)
    evaluation = runs / "evaluations" / "ours-resnet18-avgpool"  # evaluate's default --out
    evaluation.mkdir(parents=True)
    (evaluation / "evaluation.csv").write_text("neuron,concept,AUC\n0,dog,0.9\n")
    (evaluation / "summary.json").write_text("{}")
    rows = json.loads(invoke("report", runs, "--format", "json").stdout)
    assert "evaluations" not in {r["run_id"] for r in rows}
    assert "evaluations" not in {entry.run_id for entry in index_runs(runs)}
    assert "zz-corrupt" in {r["run_id"] for r in rows}  # a damaged run is still listed


def test_wrong_typed_records_and_events_do_not_break_the_others(invoke, runs_dir, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs, symlinks=True)
    done = next(runs.glob("*n0-5"))
    events = (done / "events.jsonl").read_text().splitlines()
    first = json.loads(events[0])
    first["score"] = "0.9"  # a string where a number belongs
    (done / "events.jsonl").write_text("\n".join([json.dumps(first), *events[1:], "[1, 2]"]) + "\n")
    summary = json.loads((done / "summary.json").read_text())
    summary["neurons"]["5"]["best"]["score"] = "high"
    (done / "summary.json").write_text(json.dumps(summary))
    odd = runs / "odd-types"
    shutil.copytree(done, odd)
    record = json.loads((odd / "run.json").read_text())
    record["config"], record["error"], record["run_id"] = "not a mapping", 12, "odd-types"
    (odd / "run.json").write_text(json.dumps(record))
    for format in ("table", "json", "md"):
        out = tmp_path / f"report.{format}"
        result = invoke("report", runs, "--format", format, "--out", out)
        assert result.exit_code == 0, (format, result.output)
    rows = json.loads((tmp_path / "report.json").read_text())
    assert (
        "run.json has a damaged config"
        in next(r for r in rows if r["run_id"] == "odd-types")["error"]
    )
    assert any(r["concept"] for r in rows if r["run_id"] == done.name)

    from tests.test_dashboard import app

    for page in ("app.py", "pages/2_Reasoning.py", "pages/3_Compare.py"):  # those that broke
        at = app("app.py", runs, monkeypatch, done.name)
        if page != "app.py":
            at.switch_page(page).run()
        assert not at.exception, page
