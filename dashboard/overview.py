"""Overview page: what the unit is and how sure we are, the search, the parameters, exports."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))
from common import html_report, sidebar  # noqa: E402

from nacosae.report import export, plots  # noqa: E402
from nacosae.report.browse import neuron_events  # noqa: E402

st.title("Overview")
run, neuron = sidebar()
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
    # the HTML report embeds every image: built only when asked for, then kept per run state
    if downloads[2].button("Prepare HTML report", key=f"html_{run.run_id}") or st.session_state.get(
        f"html_ready_{run.run_id}"
    ):
        st.session_state[f"html_ready_{run.run_id}"] = True
        downloads[2].download_button("HTML", html_report(run.path), f"{run.run_id}.html")
