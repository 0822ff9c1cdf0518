"""Images page: the rendered images of every scored concept, per iteration."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import sidebar  # noqa: E402

from nacosae.report.browse import neuron_events  # noqa: E402

st.title("Images")
run, neuron = sidebar()
if run is not None and neuron is not None:
    metric = run.config.get("metric", "auc")
    for event in neuron_events(run, neuron):
        if event.get("score") is None:
            continue
        st.markdown(
            f"**{event['iteration']}** · {event['source']} · *{event['concept']}* · "
            f"{metric} {event['score']:.4f}"
        )
        files = [run.path / f for f in event.get("images", []) if (run.path / f).is_file()]
        if files:
            st.image([str(f) for f in files], width=128)
        else:
            st.caption("images not saved for this run")
