"""Reasoning page: per iteration the scored history the LLM was shown, its reasoning, its raw
answers (plain text) and retries, with the score or failure in each title."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import neuron_events, sidebar  # noqa: E402

st.title("Reasoning")
run, neuron = sidebar()
if run is not None and neuron is not None:
    best_concept = (run.neurons[neuron].best or {}).get("concept", "-")
    st.header(f"Neuron {neuron}: {best_concept}")
    metric = run.config.get("metric", "auc")
    st.caption(
        f"prompt template: {run.config.get('prompt', 'main')} · answer format: "
        f"{run.config.get('llm_output', 'tags')}"
    )
    tried: list[str] = []
    for event in neuron_events(run, neuron):
        if event["iteration"] == 0:
            tried.append(event.get("concept") or "")
            continue
        if event.get("status") == "failed" or event.get("score") is None:
            title = f"iteration {event['iteration']} ({event['source']}): ✗ no valid proposal"
        else:
            title = (
                f"iteration {event['iteration']} ({event['source']}): {event['concept']} · "
                f"{metric} {event['score']:.4f}"
            )
        retries = event.get("parse_retries", 0)
        if retries:
            title += f" · {retries} re-ask{'s' if retries > 1 else ''}"
        with st.expander(title):
            st.write(f"reasoning: {event.get('reasoning') or '-'}")
            if event.get("history_shown"):
                st.caption(f"the scored concepts the LLM was shown ({metric}):")
                st.table(event["history_shown"])
            st.caption("concepts tried before this step: " + (", ".join(tried) or "-"))
            answers = [event["raw_answer"]] if event.get("raw_answer") else []
            for number, answer in enumerate(answers or event.get("raw_answers", []), start=1):
                st.text(f"answer {number}:\n{answer}")
            for error in event.get("parse_errors", []):
                st.warning(error)
        if event.get("concept"):
            tried.append(event["concept"])
