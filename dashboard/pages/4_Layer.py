"""Layer page: every unit of the run in one sortable, filterable table, the score histogram, and
a click-through to a unit's Overview. Built from summary.json only, so it stays quick for
thousands of units."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import open_run, pages, run_index, sidebar  # noqa: E402

from nacosae.report import plots  # noqa: E402
from nacosae.report.analyses import analyse  # noqa: E402
from nacosae.report.browse import layer_rows  # noqa: E402

st.title("Layer")
run, neuron = sidebar()
if run is not None and run.neurons:
    metric = run.config.get("metric", "auc")
    rows = layer_rows(run)
    wanted = st.text_input("Filter by concept", key="layer_filter").strip().lower()
    shown = [r for r in rows if wanted in (r["concept"] or "").lower()] if wanted else rows
    st.caption(
        f"{len(shown)} of {len(rows)} units of {run.config.get('layer')} · {metric} · click a "
        "column to sort"
    )
    st.dataframe(shown, hide_index=True, width="stretch")
    scores = [r[metric] for r in rows if isinstance(r[metric], float)]
    if scores:
        st.image(plots.score_histogram(scores, metric), caption=f"best {metric} per unit")
    units = [r["neuron"] for r in shown]
    if units:
        index = units.index(neuron) if neuron in units else 0
        picked = st.selectbox("Open unit", units, index=index, key="layer_open")
        if st.button("Open in Overview", key="layer_go"):
            st.session_state["neuron"] = picked
            st.switch_page(pages()[0])
    model, layer = run.config.get("model"), run.config.get("layer")
    same_layer = [
        open_run(entry.path)
        for entry in run_index(st.session_state["runs_dir"])
        if (entry.model, entry.layer) == (str(model), str(layer)) and entry.status != "corrupt"
    ]
    for group in analyse(same_layer):
        if group.metric != metric:
            continue
        st.subheader(f"Across the runs of this layer: {len(group.units)} units")
        names, total = group.class_name_share()
        st.caption(
            f"{names} of {total} final concepts ({100 * names / total:.0f}%) are control-class "
            "names (exact match, as the original counts them); `nacosae evaluate --novelty` "
            "measures novelty by MiniLM similarity"
        )
        left, right = st.columns(2)
        left.image(
            plots.best_iteration_histogram(group.best_iteration_counts()),
            caption="iteration that found each unit's best concept (0: an initial class)",
        )
        right.image(
            plots.cumulative_best_curves([u.curve for u in group.units], metric),
            caption="best score after each iteration: every unit, and the median",
        )
