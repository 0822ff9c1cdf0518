"""Runs of many neurons made from a real smoke run, for the dashboard's tests and benchmark."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def scaled_copy(source: Path, runs: Path, units: int) -> Path:
    """`source` with `units` neurons, each a copy of a real neuron's events and summary."""
    target = runs / f"{source.name[:15]}_tiny_cnn_avgpool_n0-{units - 1}"
    shutil.copytree(source, target, copy_function=os.link)
    record = json.loads((source / "run.json").read_text())
    summary = json.loads((source / "summary.json").read_text())
    events = [json.loads(line) for line in (source / "events.jsonl").read_text().splitlines()]
    real = sorted(summary["neurons"])
    record["neurons"] = list(range(units))
    summary["neurons"] = {str(n): summary["neurons"][real[n % len(real)]] for n in range(units)}
    lines = []
    for n in range(units):
        model = int(real[n % len(real)])
        lines += [json.dumps({**e, "neuron": n}) for e in events if e["neuron"] == model]
    for name, text in (
        ("run.json", json.dumps(record)),
        ("summary.json", json.dumps(summary)),
        ("events.jsonl", "\n".join(lines) + "\n"),
    ):
        (target / name).unlink()
        (target / name).write_text(text)
    return target
