"""Images page: the rendered images of every scored concept, sorted by score or in run order,
the best concept marked, each image with the unit's activation on it."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import neuron_events, sidebar  # noqa: E402

from nacosae.report.browse import activation_text, image_activations  # noqa: E402

st.title("Images")
run, neuron = sidebar()
if run is not None and neuron is not None:
    best = (run.neurons[neuron].best or {}).get("concept")
    st.header(f"Neuron {neuron}: {best or '-'}")
    metric = run.config.get("metric", "auc")
    order = st.radio("Order", ["by score", "in run order"], horizontal=True, key="image_order")
    scored = [e for e in neuron_events(run, neuron) if e.get("score") is not None]
    if order == "by score":
        scored.sort(key=lambda e: -e["score"])
    for event in scored:
        mark = " ★ best" if event["concept"] == best else ""
        st.markdown(
            f"**{event['concept']}**{mark} · {metric} {event['score']:.4f} · iteration "
            f"{event['iteration']} ({event['source']})"
        )
        files = [run.path / f for f in event.get("images", []) if (run.path / f).is_file()]
        if not files:
            st.caption("images not saved for this run")
            continue
        values = image_activations(run, neuron, event["concept"], files)
        captions = [f"activation {activation_text(v)}" if v is not None else "" for v in values]
        st.image([str(f) for f in files], caption=captions, width=160)
