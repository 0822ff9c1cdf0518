"""Overview page: what the unit is and how sure we are (above the fold), then the search, the
parameters and the exports."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))
from common import html_report, neuron_events, plot, sidebar  # noqa: E402

from nacosae.report import export  # noqa: E402
from nacosae.report.browse import (  # noqa: E402
    activation_text,
    best_event,
    held_out_score,
    parameter_rows,
    run_stamp,
    top_control_images,
)

SHOWN_METRICS = (*export.ALL_METRICS, "p")

st.title("Overview")
run, neuron = sidebar()
if run is not None and neuron is not None:
    view = run.neurons[neuron]
    best = view.best or {}
    metric = run.config.get("metric", "auc")
    events = neuron_events(run, neuron)
    event = best_event(events, best)
    st.header(f"Neuron {neuron}: {best.get('concept', '-')}")
    st.caption(f"run {run.run_id} · {run.status} · source {best.get('source', '-')}")
    if view.note:
        st.info(view.note)
    if len(view.explanations) > 1:
        listed = " · ".join(f"{e['concept']} ({e['score']:.4f})" for e in view.explanations)
        st.markdown(f"**Explanations** (distinct, significant against the controls): {listed}")
    scores = (event or {}).get("metrics") or {}
    cells = st.columns(5)
    cells[0].metric("AUC", f"{scores['auc']:.4f}" if "auc" in scores else "-")
    cells[1].metric("MAD", f"{scores['mad']:.4f}" if "mad" in scores else "-")
    cells[2].metric("p (Mann-Whitney)", f"{scores['p']:.3g}" if "p" in scores else "-")
    controls = ((event or {}).get("control") or {}).get("images")
    cells[3].metric("control images", str(controls) if controls is not None else "-")
    held_out = held_out_score(run, neuron, best.get("concept"))
    cells[4].metric("held-out AUC", f"{held_out['AUC']:.4f}" if held_out else "not evaluated")
    if "auc" in scores and scores["auc"] <= 0.5:
        st.warning(
            f"AUC {scores['auc']:.3f} is at or below chance: the concept's images do not drive "
            "this unit more than ordinary photos; the explanation is not supported."
        )
    left, right = st.columns(2)
    with left:
        st.subheader("Its generated images")
        files = [run.path / f for f in (event or {}).get("images", [])]
        files = [str(f) for f in files if f.is_file()]
        if files:
            st.image(files, width=120)
        else:
            st.caption("images not saved for this run")
    with right:
        st.subheader("Control images that drive it most")
        top = top_control_images(run, neuron, k=8)
        shown = [t for t in top if t.path is not None]
        if shown:
            st.image(
                [str(t.path) for t in shown],
                caption=[f"{t.concept} ({activation_text(t.activation)})" for t in shown],
                width=120,
            )
        else:
            st.caption("the control store or its images are not available here")

    st.subheader("The search")
    st.dataframe(
        [
            {
                "iteration": e["iteration"],
                "source": e["source"],
                "concept": e.get("concept"),
                **{m: (e.get("metrics") or {}).get(m) for m in SHOWN_METRICS},
            }
            for e in events
        ],
        hide_index=True,
    )
    columns = st.columns(3)
    stamp = run_stamp(run.path)
    captions = {
        "scores_per_iteration": f"{metric} per iteration",
        "best_so_far": f"best {metric} so far",
        "relative_scores": f"{metric} relative to the best initial",
    }
    for column, (kind, caption) in zip(columns, captions.items(), strict=True):
        column.image(plot(kind, str(run.path), stamp, neuron, metric), caption=caption)
    st.subheader("Final history")
    st.dataframe(view.history, hide_index=True)
    st.subheader("Parameters")
    st.dataframe(parameter_rows(run), hide_index=True)
    with st.expander("run.json"):
        st.json(run.record, expanded=False)
    downloads = st.columns(3)
    downloads[0].download_button("CSV", lambda: export.to_csv([run]), f"{run.run_id}.csv")
    downloads[1].download_button("JSON", lambda: export.to_json([run]), f"{run.run_id}.json")
    # the HTML report embeds every image: built only when asked for, then kept per run state
    if downloads[2].button("Prepare HTML report", key=f"html_{run.run_id}") or st.session_state.get(
        f"html_ready_{run.run_id}"
    ):
        st.session_state[f"html_ready_{run.run_id}"] = True
        downloads[2].download_button("HTML", html_report(run.path), f"{run.run_id}.html")
