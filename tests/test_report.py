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
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)""", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in text and "<script" not in text
    done = json.loads(next(runs_dir.glob("*n0-5/summary.json")).read_text())
    assert done["neurons"]["0"]["best"]["concept"] in text
    assert "score histogram" in text and "best so far" in text and "relative score" in text


def test_markdown_report(invoke, runs_dir):
    result = invoke("report", runs_dir, "--format", "md")
    assert result.exit_code == 0
    assert result.output.startswith("# nacosae report")
    assert "### Neuron 0:" in result.output and "### Neuron 5:" in result.output
    assert "](data:image/png;base64," in result.output


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
