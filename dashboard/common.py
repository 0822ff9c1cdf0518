"""The sidebar every page shares: runs directory, filters, run and neuron pickers.

Every choice is kept in session state under its own name (not only under the widget's key,
which Streamlit forgets when a page without that widget runs), so it holds across pages.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from nacosae.report import browse

DASHBOARD = Path(__file__).parent


def pages() -> list:
    """The app's pages in menu order (app.py runs them with st.navigation)."""
    return [
        st.Page(DASHBOARD / "overview.py", title="Overview", default=True),
        st.Page(DASHBOARD / "pages" / "1_Images.py", title="Images"),
        st.Page(DASHBOARD / "pages" / "2_Reasoning.py", title="Reasoning"),
        st.Page(DASHBOARD / "pages" / "3_Compare.py", title="Compare"),
        st.Page(DASHBOARD / "pages" / "4_Layer.py", title="Layer"),
    ]


@st.cache_data(show_spinner=False)
def cached_index(runs_dir: str, stamp: tuple) -> list[browse.RunEntry]:
    """The run index, re-read whenever any run's record changes (see `browse.index_stamp`)."""
    return browse.index_runs(Path(runs_dir))


def run_index(runs_dir: str) -> list[browse.RunEntry]:
    return cached_index(runs_dir, browse.index_stamp(Path(runs_dir)))


@st.cache_data(show_spinner="Building the HTML report...", max_entries=8)
def _html_report(run_path: str, stamp: tuple) -> str:
    from nacosae.report import export

    return export.to_html([browse.open_run(run_path)])


def html_report(run_path: Path) -> str:
    """The run's HTML report, built once per state of the run (it embeds every image)."""
    return _html_report(str(run_path), browse.run_stamp(Path(run_path)))


@st.cache_resource(show_spinner=False, max_entries=16)
def _run_view(run_path: str, stamp: tuple) -> browse.RunView:
    return browse.open_run(run_path)


def open_run(run_path: str) -> browse.RunView:
    """The run, read once per state of its files (a rerun only checks their times)."""
    return _run_view(run_path, browse.run_stamp(Path(run_path)))


@st.cache_resource(show_spinner=False, max_entries=16)
def _events_by_neuron(run_path: str, stamp: tuple) -> dict[int, list[dict]]:
    by_neuron: dict[int, list[dict]] = {}
    for event in browse.open_run(run_path).events():
        by_neuron.setdefault(event.get("neuron"), []).append(event)
    return by_neuron


def neuron_events(run: browse.RunView, neuron: int) -> list[dict]:
    """One neuron's events; the events file is read once per state of the run."""
    return _events_by_neuron(str(run.path), browse.run_stamp(run.path)).get(neuron, [])


@st.cache_data(show_spinner=False, max_entries=256)
def plot(kind: str, run_path: str, stamp: tuple, neuron: int, metric: str) -> bytes:
    """One of the report's plots of a neuron, drawn once per state of the run."""
    from nacosae.report import plots

    run = _run_view(run_path, stamp)
    events = _events_by_neuron(run_path, stamp).get(neuron, [])
    if kind == "best_so_far":
        return plots.best_so_far({str(neuron): run.neurons[neuron].curve}, metric)
    return getattr(plots, kind)(events, metric)


def _remembered_choice(label: str, values: list, name: str, **kwargs) -> object:
    """A sidebar selectbox whose choice survives page switches (session state `name`)."""
    current = st.session_state.get(name)
    index = values.index(current) if current in values else 0
    picked = st.sidebar.selectbox(label, values, index=index, key=f"{name}_pick", **kwargs)
    st.session_state[name] = picked
    return picked


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
    entries = run_index(runs_dir)
    if not entries:
        st.info(f"No runs in {runs_dir} yet. Run `nacosae explain --preset smoke` to make one.")
        return None, None

    def choice(label: str, values: list[str]) -> str | None:
        picked = _remembered_choice(label, ["(all)", *sorted(set(values))], f"filter_{label}")
        return None if picked == "(all)" else picked

    model = choice("Model", [e.model for e in entries])
    layer = choice("Layer", [e.layer for e in entries])
    status = choice("Status", [e.status for e in entries])
    shown = browse.filter_runs(entries, model, layer, status)
    if not shown:
        st.info("No run matches the filters.")
        return None, None
    ids = [e.run_id for e in shown]
    run_id = _remembered_choice("Run", ids, "run_id", format_func=browse.run_label)
    entry = next(e for e in shown if e.run_id == run_id)
    if entry.status == "corrupt":
        st.error(f"Run {run_id} cannot be read: {entry.error}")
        return None, None
    run = open_run(entry.path)
    if run.error:
        st.warning(f"Run {run_id} ({run.status}): {run.error}")
    for warning in run.warnings:
        st.warning(f"Run {run_id}: {warning}")
    if run.is_smoke:
        st.info("A smoke-preset run: tiny random models, its results mean nothing.")
    if not run.neurons:
        st.info(f"Run {run_id} has no scored concepts yet (status: {run.status}).")
        return run, None
    neuron = _remembered_choice("Neuron", sorted(run.neurons), "neuron")
    return run, int(neuron)  # type: ignore[call-overload]
