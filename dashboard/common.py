"""The sidebar every page shares: runs directory, filters, run and neuron pickers."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from nacosae.report import browse


@st.cache_data(show_spinner=False)
def cached_index(runs_dir: str, stamp: float) -> list[browse.RunEntry]:
    """The run index, re-read when the runs directory changes (new or removed runs)."""
    return browse.index_runs(Path(runs_dir))


def sidebar() -> tuple[browse.RunView | None, int | None]:
    """Draw the sidebar; returns the selected run (loaded) and neuron, or None."""
    st.sidebar.title("nacosae")
    runs_dir = st.sidebar.text_input(
        "Runs directory", value=st.session_state.get("runs_dir", str(browse.default_runs_dir()))
    )
    st.session_state["runs_dir"] = runs_dir
    path = Path(runs_dir)
    if not path.is_dir():
        st.info(f"No runs directory at {runs_dir}. Run `nacosae explain` first.")
        return None, None
    entries = cached_index(runs_dir, path.stat().st_mtime)
    if not entries:
        st.info(f"No runs in {runs_dir} yet. Run `nacosae explain --preset smoke` to make one.")
        return None, None

    def choice(label: str, values: list[str]) -> str | None:
        picked = st.sidebar.selectbox(label, ["(all)", *sorted(set(values))], key=f"f_{label}")
        return None if picked == "(all)" else picked

    model = choice("Model", [e.model for e in entries])
    layer = choice("Layer", [e.layer for e in entries])
    status = choice("Status", [e.status for e in entries])
    shown = browse.filter_runs(entries, model, layer, status)
    if not shown:
        st.info("No run matches the filters.")
        return None, None
    ids = [e.run_id for e in shown]
    current = st.session_state.get("run_id")
    run_id = st.sidebar.selectbox(
        "Run", ids, index=ids.index(current) if current in ids else 0, key="run_pick"
    )
    st.session_state["run_id"] = run_id
    entry = next(e for e in shown if e.run_id == run_id)
    if entry.status == "corrupt":
        st.error(f"Run {run_id} cannot be read: {entry.error}")
        return None, None
    run = browse.open_run(entry.path)
    if run.error:
        st.warning(f"Run {run_id} ({run.status}): {run.error}")
    for warning in run.warnings:
        st.warning(f"Run {run_id}: {warning}")
    if run.is_smoke:
        st.info("A smoke-preset run: tiny random models, its results mean nothing.")
    if not run.neurons:
        st.info(f"Run {run_id} has no scored concepts yet (status: {run.status}).")
        return run, None
    neurons = sorted(run.neurons)
    neuron = st.sidebar.selectbox("Neuron", neurons, key="neuron_pick")
    return run, neuron
