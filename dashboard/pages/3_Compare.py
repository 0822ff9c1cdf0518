"""Compare page: several neurons or runs side by side, best-so-far curves per metric."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import run_index, sidebar  # noqa: E402

from nacosae.report import plots  # noqa: E402
from nacosae.report.browse import open_run  # noqa: E402

st.title("Compare")
run, chosen_neuron = sidebar()
runs_dir = st.session_state.get("runs_dir")
if runs_dir and Path(runs_dir).is_dir():
    entries = [e for e in run_index(runs_dir) if e.neurons]
    options = [f"{e.run_id} / {n}" for e in entries for n in e.neurons]
    current = f"{run.run_id} / {chosen_neuron}" if run is not None else None
    others = [o for o in options if o != current]
    default = ([current] if current in options else []) + others[: 2 if current else 3]
    picked = st.multiselect("Runs and neurons", options, default=default)
    by_metric: dict[str, dict[str, list[float]]] = {}
    table = []
    by_id = {e.run_id: e for e in entries}
    for item in picked:
        run_id, neuron = item.rsplit(" / ", 1)
        view = open_run(by_id[run_id].path)
        found = view.neurons.get(int(neuron))
        if found is None:
            continue
        metric = view.config.get("metric", "auc")
        by_metric.setdefault(metric, {})[item] = found.curve
        best = found.best or {}
        table.append(
            {
                "run / neuron": item,
                "concept": best.get("concept"),
                "metric": metric,
                "score": best.get("score"),
                "seed": view.config.get("seed"),
                "status": view.status,
            }
        )
    if table:
        st.dataframe(table, hide_index=True)
        if len(by_metric) > 1:
            st.info("The runs use different metrics: one plot per metric.")
        for metric, curves in sorted(by_metric.items()):
            st.image(plots.best_so_far(curves, metric), caption=f"best {metric} so far")

st.subheader("Methods, from evaluation CSVs")
paths_text = st.text_area(
    "Evaluation CSVs of `nacosae evaluate` or CoSy (one path a line)", key="compare_methods"
)
paths = [Path(line.strip()).expanduser() for line in paths_text.splitlines() if line.strip()]
if len(paths) >= 2:
    from nacosae.errors import NacosaeError
    from nacosae.evaluation.compare import as_json, box_plot, compare

    try:
        results, methods = compare(paths)
    except NacosaeError as exc:
        st.error(str(exc))
    else:
        st.dataframe(as_json(results), hide_index=True)
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            box_plot(methods, Path(folder) / "methods.png")
            st.image(
                (Path(folder) / "methods.png").read_bytes(),
                caption="AUC and MAD per neuron, per method (paired tests in the table)",
            )
