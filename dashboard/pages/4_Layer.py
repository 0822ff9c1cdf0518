"""Layer page: every unit of the run in one sortable, filterable table, the score histogram, and
a click-through to a unit's Overview. Built from summary.json only, so it stays quick for
thousands of units."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import pages, sidebar  # noqa: E402

from nacosae.report import plots  # noqa: E402
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
