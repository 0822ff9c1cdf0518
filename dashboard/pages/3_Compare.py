"""Compare page: several neurons or runs side by side, best-so-far curves overlaid."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import cached_index, sidebar  # noqa: E402

from nacosae.report import plots  # noqa: E402
from nacosae.report.browse import open_run  # noqa: E402

run, _ = sidebar()
st.title("Compare")
runs_dir = st.session_state.get("runs_dir")
if runs_dir and Path(runs_dir).is_dir():
    entries = [e for e in cached_index(runs_dir, Path(runs_dir).stat().st_mtime) if e.neurons]
    options = [f"{e.run_id} / {n}" for e in entries for n in e.neurons]
    default = options[: min(3, len(options))]
    picked = st.multiselect("Runs and neurons", options, default=default)
    curves, table = {}, []
    by_id = {e.run_id: e for e in entries}
    for item in picked:
        run_id, neuron = item.rsplit(" / ", 1)
        view = open_run(by_id[run_id].path)
        found = view.neurons.get(int(neuron))
        if found is None:
            continue
        curves[item] = found.curve
        best = found.best or {}
        table.append(
            {"run / neuron": item, "concept": best.get("concept"), "score": best.get("score")}
        )
    if table:
        st.dataframe(table, hide_index=True)
        st.image(plots.best_so_far(curves, "score"), caption="best so far")
