"""Reasoning page: per iteration, the LLM's reasoning, its answer and parse retries."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import sidebar  # noqa: E402

from nacosae.report.browse import neuron_events  # noqa: E402

st.title("Reasoning")
run, neuron = sidebar()
if run is not None and neuron is not None:
    st.caption(f"prompt template: {run.config.get('prompt', 'main')}")
    for event in neuron_events(run, neuron):
        if event["iteration"] == 0:
            continue
        label = event.get("concept") or "no valid proposal"
        with st.expander(f"iteration {event['iteration']} ({event['source']}): {label}"):
            st.write(f"reasoning: {event.get('reasoning') or '-'}")
            st.code(event.get("raw_answer") or "\n---\n".join(event.get("raw_answers", [])))
            st.write(f"parse retries: {event.get('parse_retries', 0)}")
            for error in event.get("parse_errors", []):
                st.warning(error)
