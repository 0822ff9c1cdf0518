"""nacosae dashboard: browse runs (read-only over the run directories). Overview page."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))
from common import sidebar  # noqa: E402

from nacosae.report import export, plots  # noqa: E402
from nacosae.report.browse import neuron_events  # noqa: E402

st.set_page_config(page_title="nacosae", layout="wide")
run, neuron = sidebar()
st.title("Overview")
if run is not None and neuron is not None:
    view = run.neurons[neuron]
    best = view.best or {}
    metric = run.config.get("metric", "auc")
    st.header(f"Neuron {neuron}: {best.get('concept', '-')}")
    st.metric(f"best {metric}", f"{best.get('score', float('nan')):.4f}")
    st.caption(f"run {run.run_id} · {run.status} · source {best.get('source', '-')}")
    events = neuron_events(run, neuron)
    st.subheader("Concepts")
    st.dataframe(
        [
            {
                "iteration": e["iteration"],
                "source": e["source"],
                "concept": e.get("concept"),
                metric: e.get("score"),
            }
            for e in events
        ],
        hide_index=True,
    )
    st.subheader("Final history")
    st.dataframe(view.history, hide_index=True)
    columns = st.columns(3)
    columns[0].image(plots.scores_per_iteration(events, metric), caption="score per iteration")
    columns[1].image(plots.best_so_far({str(neuron): view.curve}, metric), caption="best so far")
    columns[2].image(plots.relative_scores(events, metric), caption="relative score")
    st.subheader("Parameters")
    st.json(run.config, expanded=False)
    downloads = st.columns(3)
    downloads[0].download_button("CSV", export.to_csv([run]), f"{run.run_id}.csv")
    downloads[1].download_button("JSON", export.to_json([run]), f"{run.run_id}.json")
    downloads[2].download_button("HTML", export.to_html([run]), f"{run.run_id}.html")
