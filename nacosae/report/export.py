"""Exporters: CSV and JSON rows, and self-contained Markdown and HTML reports."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from nacosae.report import plots
from nacosae.report.runs import ROW_COLUMNS, RunView, rows

THUMBNAIL = 128


def to_csv(runs: list[RunView]) -> str:
    table = rows(runs)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_json(runs: list[RunView]) -> str:
    return json.dumps(rows(runs), indent=2) + "\n"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _thumbnail(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
    except OSError:
        return None
    return _data_uri(buffer.getvalue())


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


class _Document:
    """Collects report parts and renders them as Markdown or HTML."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[tuple[str, Any]] = []

    def heading(self, text: str, level: int) -> None:
        self.parts.append(("heading", (text, level)))

    def text(self, text: str) -> None:
        self.parts.append(("text", text))

    def table(self, header: list[str], body: list[list[Any]]) -> None:
        self.parts.append(("table", (header, body)))

    def image(self, uri: str, caption: str) -> None:
        self.parts.append(("image", (uri, caption)))

    def grid(self, items: list[tuple[str, str]]) -> None:
        self.parts.append(("grid", items))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.parts:
            if kind == "heading":
                out += ["#" * value[1] + " " + value[0], ""]
            elif kind == "text":
                out += [value, ""]
            elif kind == "table":
                header, body = value
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += [
                    "| " + " | ".join(_fmt(c).replace("|", "/") for c in r) + " |" for r in body
                ]
                out.append("")
            elif kind == "image":
                out += [f"![{value[1]}]({value[0]})", ""]
            elif kind == "grid":
                out += [" ".join(f"![{cap}]({uri})" for uri, cap in value), ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        out = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}",
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:left}figure{display:inline-block;margin:4px;"
            "text-align:center;font-size:11px}",
            "</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for kind, value in self.parts:
            if kind == "heading":
                out.append(f"<h{value[1]}>{esc(value[0])}</h{value[1]}>")
            elif kind == "text":
                out.append(f"<p>{esc(value)}</p>")
            elif kind == "table":
                header, body = value
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
                for r in body:
                    out.append("<tr>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in r) + "</tr>")
                out.append("</table>")
            elif kind == "image":
                out.append(f"<figure><img src='{value[0]}' alt='{esc(value[1])}'></figure>")
            elif kind == "grid":
                out.append("<div>")
                for uri, cap in value:
                    out.append(f"<figure><img src='{uri}' alt='{esc(cap)}'><br>{esc(cap)}</figure>")
                out.append("</div>")
        out.append("</body></html>")
        return "\n".join(out)


def build_document(runs: list[RunView]) -> _Document:
    """The full report: a summary across neurons, then per run and neuron the details."""
    doc = _Document("nacosae report")
    table = rows(runs)
    doc.heading("Summary", 2)
    doc.table(
        ["run", "model", "layer", "neuron", "concept", "score", "status"],
        [
            [
                r["run_id"],
                r["model"],
                r["layer"],
                r["neuron"],
                r["concept"],
                r["score"],
                r["status"],
            ]
            for r in table
        ],
    )
    scores = [r["score"] for r in table if isinstance(r["score"], float)]
    if scores:
        metric = table[0].get("metric", "auc")
        doc.image(_data_uri(plots.score_histogram(scores, metric)), "score histogram")
    for run in runs:
        smoke = " (smoke preset: tiny random models, meaningless)" if run.is_smoke else ""
        doc.heading(f"Run {run.run_id} ({run.status}){smoke}", 2)
        if run.error:
            doc.text(f"error: {run.error}")
        for warning in run.warnings:
            doc.text(f"warning: {warning}")
        config = run.config
        params = [
            "model",
            "layer",
            "weights",
            "language_model",
            "llm_url",
            "t2i_model",
            "num_img",
            "n_iters",
            "metric",
            "prompt",
            "control_strategy",
            "seed",
        ]
        doc.table(["parameter", "value"], [[k, config.get(k)] for k in params if k in config])
        events = run.events()
        metric = config.get("metric", "auc")
        for neuron, view in sorted(run.neurons.items()):
            mine = [e for e in events if e["neuron"] == neuron]
            best = view.best or {}
            doc.heading(f"Neuron {neuron}: {best.get('concept', '-')}", 3)
            doc.text(f"best {metric}: {_fmt(best.get('score'))} ({best.get('source', '-')})")
            doc.table(
                ["iteration", "source", "concept", metric],
                [
                    [
                        e["iteration"],
                        e["source"],
                        e.get("concept") or "(no valid proposal)",
                        e.get("score"),
                    ]
                    for e in mine
                ],
            )
            if view.history:
                doc.text(
                    "final history: "
                    + ", ".join(f"{h['concept']} ({_fmt(h['score'])})" for h in view.history)
                )
            if mine:
                doc.image(
                    _data_uri(plots.scores_per_iteration(mine, metric)), "score per iteration"
                )
                doc.image(
                    _data_uri(plots.best_so_far({str(neuron): view.curve}, metric)), "best so far"
                )
                doc.image(_data_uri(plots.relative_scores(mine, metric)), "relative score")
            for e in mine:
                thumbs = [_thumbnail(run.path / f) for f in e.get("images", [])]
                cells = [
                    (t, f"{e['iteration']}: {e['concept']} {_fmt(e['score'])}") for t in thumbs if t
                ]
                if cells:
                    doc.grid(cells)
    return doc


def to_markdown(runs: list[RunView]) -> str:
    return build_document(runs).markdown()


def to_html(runs: list[RunView]) -> str:
    return build_document(runs).html()
