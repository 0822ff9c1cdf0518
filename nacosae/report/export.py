"""Exporters: CSV and JSON rows, and self-contained Markdown and HTML reports."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from nacosae.report import plots
from nacosae.report.runs import ROW_COLUMNS, RunView, rows

THUMBNAIL = 96  # pixels, the longer side
JPEG_QUALITY = 60
ALL_METRICS = ("auc", "mad", "mean", "auprc", "correlation")
PARAMETERS = (
    "model", "layer", "weights", "language_model", "llm_url", "t2i_model", "num_img",
    "num_inf_steps", "n_iters", "metric", "prompt", "control_strategy", "seed", "preset",
)  # fmt: skip


def to_csv(runs: list[RunView]) -> str:
    table = rows(runs)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_json(runs: list[RunView]) -> str:
    return json.dumps(rows(runs), indent=2) + "\n"


class ImageSink:
    """Where a report's images go: embedded as data URIs (one self-contained file), or written
    as files into a folder beside the report and linked relatively (`--images files`: a
    Markdown report then reads as text). Thumbnails are downscaled JPEGs either way."""

    def __init__(self, folder: Path | None = None, link_prefix: str = "") -> None:
        self.folder = folder
        self.link_prefix = link_prefix
        self.count = 0
        self._thumbnails: dict[tuple[int, int], str | None] = {}  # by file identity

    def add(self, data: bytes, suffix: str) -> str:
        if self.folder is None:
            kind = {"png": "image/png", "jpg": "image/jpeg"}[suffix]
            return f"data:{kind};base64," + base64.b64encode(data).decode()
        from nacosae.store.atomic import atomic_write

        self.count += 1
        name = f"{self.count:05d}.{suffix}"
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / name, lambda tmp: tmp.write_bytes(data))
        return f"{self.link_prefix}{name}"

    def plot(self, png: bytes) -> str:
        return self.add(png, "png")

    def thumbnail(self, path: Path) -> str | None:
        """A downscaled JPEG of an image; a file seen before (the runs' images are hard links
        into the concept cache, shared by neurons) is encoded once."""
        try:
            info = path.stat()
        except OSError:
            return None
        key = (info.st_dev, info.st_ino)
        if key not in self._thumbnails:
            self._thumbnails[key] = self._encode_thumbnail(path)
        return self._thumbnails[key]

    def _encode_thumbnail(self, path: Path) -> str | None:
        from PIL import Image

        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        except OSError:
            return None
        return self.add(buffer.getvalue(), "jpg")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


class _Document:
    """Collects report parts and renders them as Markdown or HTML (with a linked table of
    contents, a caption under every plot and one caption per row of images)."""

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

    def grid(self, uris: list[str], caption: str) -> None:
        self.parts.append(("grid", (uris, caption)))

    def code(self, text: str) -> None:
        self.parts.append(("code", text))

    def _contents(self) -> list[tuple[str, int]]:
        return [value for kind, value in self.parts if kind == "heading" and value[1] <= 3]

    def markdown(self) -> str:
        out = [f"# {self.title}", "", "Contents:", ""]
        for text, level in self._contents():
            out.append("  " * (level - 2) + f"- [{text}](#{_anchor(text)})")
        out.append("")
        for kind, value in self.parts:
            if kind == "heading":
                out += ["#" * value[1] + " " + value[0], ""]
            elif kind == "text":
                out += [value, ""]
            elif kind == "code":
                out += ["```text", value, "```", ""]
            elif kind == "table":
                header, body = value
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += [
                    "| " + " | ".join(_fmt(c).replace("|", "/") for c in r) + " |" for r in body
                ]
                out.append("")
            elif kind == "image":
                out += [f"![{value[1]}]({value[0]})", f"*{value[1]}*", ""]
            elif kind == "grid":
                uris, caption = value
                out += [" ".join(f"![{caption}]({uri})" for uri in uris), f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        out = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}",
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:left}figure{display:inline-block;margin:4px;"
            "text-align:center;font-size:11px}figcaption{color:#555}"
            ".row img{margin:2px}pre{background:#f6f6f6;padding:6px;white-space:pre-wrap}",
            "</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            "<nav><b>Contents</b><ul>",
        ]
        for text, level in self._contents():
            indent = "&nbsp;" * 4 * (level - 2)
            out.append(f"<li>{indent}<a href='#{_anchor(text)}'>{esc(text)}</a></li>")
        out.append("</ul></nav>")
        for kind, value in self.parts:
            if kind == "heading":
                text, level = value
                out.append(f"<h{level} id='{_anchor(text)}'>{esc(text)}</h{level}>")
            elif kind == "text":
                out.append(f"<p>{esc(value)}</p>")
            elif kind == "code":
                out.append(f"<pre>{esc(value)}</pre>")
            elif kind == "table":
                header, body = value
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
                for r in body:
                    out.append("<tr>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in r) + "</tr>")
                out.append("</table>")
            elif kind == "image":
                uri, caption = value
                out.append(
                    f"<figure><img src='{uri}' alt='{esc(caption)}'>"
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
            elif kind == "grid":
                uris, caption = value
                images = "".join(f"<img src='{u}' alt='{esc(caption)}'>" for u in uris)
                out.append(
                    f"<figure class='row'>{images}<figcaption>{esc(caption)}</figcaption></figure>"
                )
        out.append("</body></html>")
        return "\n".join(out)


def _summary(doc: _Document, runs: list[RunView], sink: ImageSink) -> None:
    """A table of every neuron with its metric, and one score histogram per metric."""
    table = rows(runs)
    doc.heading("Summary", 2)
    doc.table(
        ["run", "model", "layer", "neuron", "concept", "metric", "score", "status"],
        [
            [
                r["run_id"],
                r["model"],
                r["layer"],
                r["neuron"],
                r["concept"],
                r["metric"],
                r["score"],
                r["status"],
            ]
            for r in table
        ],  # fmt: skip
    )
    by_metric: dict[str, list[float]] = {}
    for r in table:
        if isinstance(r["score"], float):
            by_metric.setdefault(str(r["metric"] or "auc"), []).append(r["score"])
    for metric, scores in sorted(by_metric.items()):
        doc.image(
            sink.plot(plots.score_histogram(scores, metric)),
            f"best {metric} per neuron, {len(scores)} neurons",
        )


def _panels(job: tuple[list[dict[str, Any]], list[float], str]) -> bytes:
    return plots.neuron_panels(*job)


def render_panels(jobs: list[tuple[list[dict[str, Any]], list[float], str]], workers: int) -> list:
    """Each neuron's figure; with `workers` > 1, drawn in forked processes (matplotlib draws
    one figure at a time per process, and a figure costs ~0.25 s)."""
    import multiprocessing

    if workers <= 1 or len(jobs) < 4 or "fork" not in multiprocessing.get_all_start_methods():
        return [_panels(job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_panels, jobs, chunksize=max(1, len(jobs) // (workers * 4))))


def _across_units(
    doc: _Document, runs: list[RunView], sink: ImageSink, novelty: tuple[int, int] | None
) -> None:
    """The original's analyses per model, layer and metric (report/analyses.py)."""
    from nacosae.report.analyses import analyse

    for group in analyse(runs):
        doc.heading(f"Across units: {group.title}", 2)
        doc.image(
            sink.plot(plots.best_iteration_histogram(group.best_iteration_counts())),
            "iteration that found each unit's best concept (0: an initial class)",
        )
        doc.image(
            sink.plot(plots.cumulative_best_curves([u.curve for u in group.units], group.metric)),
            "best score after each iteration, every unit and the median",
        )
        names, total = group.class_name_share()
        line = (
            f"final concepts that are control-class names (exact match, as the original counts "
            f"'predefined'): {names} of {total} ({100 * names / total:.0f}%); new: "
            f"{total - names} ({100 * (total - names) / total:.0f}%)"
        )
        if novelty is not None:
            novel, counted = novelty
            line += (
                f"; new by MiniLM similarity (evaluate --novelty): {novel} of {counted} "
                f"({100 * novel / max(counted, 1):.0f}%)"
            )
        doc.text(line)


def build_document(
    runs: list[RunView],
    sink: ImageSink | None = None,
    workers: int = 1,
    novelty: tuple[int, int] | None = None,
) -> _Document:
    """The full report: a summary across neurons, the original's analyses across units, then
    per run and neuron the details. `workers` > 1 draws the neurons' figures in that many
    processes (the CLI does); `novelty` is (novel, concepts) of an `evaluate --novelty` table."""
    from nacosae.report.browse import activation_text, run_evaluation, top_control_images

    sink = sink or ImageSink()
    doc = _Document("nacosae report")
    _summary(doc, runs, sink)
    _across_units(doc, runs, sink, novelty)
    jobs, keys = [], []
    for run in runs:
        events = run.events()
        metric = run.config.get("metric", "auc")
        for neuron, view in sorted(run.neurons.items()):
            mine = [e for e in events if e["neuron"] == neuron]
            if mine:
                jobs.append((mine, view.curve, metric))
                keys.append((run.run_id, neuron))
    figures = dict(zip(keys, render_panels(jobs, workers), strict=True))
    for run in runs:
        smoke = " (smoke preset: tiny random models, meaningless)" if run.is_smoke else ""
        doc.heading(f"Run {run.run_id} ({run.status}){smoke}", 2)
        if run.error:
            doc.text(f"error: {run.error}")
        for warning in run.warnings:
            doc.text(f"warning: {warning}")
        config = run.config
        doc.table(["parameter", "value"], [[k, config.get(k)] for k in PARAMETERS if k in config])
        evaluated = run_evaluation(run)
        events = run.events()
        metric = config.get("metric", "auc")
        for neuron, view in sorted(run.neurons.items()):
            mine = [e for e in events if e["neuron"] == neuron]
            best = view.best or {}
            doc.heading(f"Neuron {neuron} of run {run.run_id}: {best.get('concept', '-')}", 3)
            if view.note:
                doc.text(view.note)
                continue
            doc.text(f"best {metric}: {_fmt(best.get('score'))} ({best.get('source', '-')})")
            if len(view.explanations) > 1:
                doc.text(
                    "explanations (distinct, significant): "
                    + "; ".join(f"{e['concept']} {_fmt(e['score'])}" for e in view.explanations)
                )
            held_out = evaluated.get((neuron, best.get("concept")))
            if held_out:
                doc.text(
                    f"held-out evaluation (CoSy): AUC {float(held_out['AUC']):.4f}, "
                    f"MAD {float(held_out['MAD']):.4f}"
                )
            doc.table(
                ["iteration", "source", "concept", *ALL_METRICS],
                [
                    [
                        e["iteration"],
                        e["source"],
                        e.get("concept") or "(no valid proposal)",
                        *(
                            (e.get("metrics") or {}).get(m, e.get("score") if m == metric else None)
                            for m in ALL_METRICS
                        ),
                    ]
                    for e in mine
                ],  # fmt: skip
            )
            if view.history:
                doc.text(
                    "final history: "
                    + ", ".join(f"{h['concept']} ({_fmt(h['score'])})" for h in view.history)
                )
            if mine:
                doc.image(
                    sink.plot(figures[(run.run_id, neuron)]),
                    f"neuron {neuron}, left to right: the {metric} of each scored concept per "
                    f"iteration; the best {metric} so far; each proposal's {metric} minus the "
                    "best initial class's",
                )
            top = [t for t in top_control_images(run, neuron, k=8) if t.path is not None]
            shown_top = [(sink.thumbnail(t.path), t) for t in top]
            if any(uri for uri, _ in shown_top):
                listed = ", ".join(f"{t.concept} {activation_text(t.activation)}" for t in top)
                doc.grid(
                    [uri for uri, _ in shown_top if uri],
                    f"neuron {neuron}: the control images that drive it most ({listed})",
                )
            for e in mine:
                thumbs = [sink.thumbnail(run.path / f) for f in e.get("images", [])]
                shown = [t for t in thumbs if t]
                if shown:
                    doc.grid(
                        shown,
                        f"iteration {e['iteration']} ({e['source']}): {e['concept']}, "
                        f"{metric} {_fmt(e['score'])}",
                    )
            proposals = [e for e in mine if e["iteration"] > 0]
            if proposals:
                doc.heading(f"Reasoning, neuron {neuron}", 4)
                for e in proposals:
                    label = e.get("concept") or "no valid proposal"
                    doc.text(f"iteration {e['iteration']} ({e['source']}): {label}")
                    if e.get("history_shown"):
                        listed = (f"{h['concept']} {_fmt(h['score'])}" for h in e["history_shown"])
                        doc.text("shown: " + "; ".join(listed))
                    doc.code(e.get("reasoning") or e.get("raw_answer") or "-")
    return doc


def to_markdown(
    runs: list[RunView],
    sink: ImageSink | None = None,
    workers: int = 1,
    novelty: tuple[int, int] | None = None,
) -> str:
    return build_document(runs, sink, workers, novelty).markdown()


def to_html(
    runs: list[RunView],
    sink: ImageSink | None = None,
    workers: int = 1,
    novelty: tuple[int, int] | None = None,
) -> str:
    return build_document(runs, sink, workers, novelty).html()
