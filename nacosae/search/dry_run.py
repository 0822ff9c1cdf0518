"""`explain --dry-run`: what a run would do, found out without loading or creating anything.

The resolved options (presets applied), every input check a run makes before it starts, and
the memory plan for the run's device, from the models' files alone (models/memory.py). With
`--device cuda --gpu-memory G` the plan is for that card even on a machine without one, so a
user can ask whether a setting fits a 16 GiB GPU before renting one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nacosae.errors import NacosaeError
from nacosae.search.options import ExplainOptions


def dry_run(options: ExplainOptions) -> dict[str, Any]:
    """{"options", "device", "models", "memory_plan", "plan", "notes", "problems"}: each
    problem is a line the real run would stop with."""
    from dataclasses import asdict

    from nacosae.config import writable_folder
    from nacosae.controls import open_controls
    from nacosae.models.units import make_readout
    from nacosae.search import neurons as selection
    from nacosae.search.model_side import ExplainJob, explain_plan, resolve_models
    from nacosae.search.prompts import load_template
    from nacosae.search.runner import store_preprocessing

    report: dict[str, Any] = {"options": options.record(), "problems": [], "notes": []}
    problems, notes = report["problems"], report["notes"]

    def check(step: Any) -> Any:
        try:
            return step()
        except NacosaeError as err:
            problems.append(str(err))
            return None

    check(options.validate)
    check(lambda: load_template(options.prompt, "main"))
    check(lambda: load_template(options.summary_prompt, "summary"))
    check(lambda: writable_folder(options.save_dir, "the runs folder (--out or SAVE_DIR)", False))
    device = report["device"] = check(lambda: planned_device(options))
    smoke_missing = "smoke" in options.preset and not Path(options.controls_root).is_dir()
    if smoke_missing:
        notes.append("--preset smoke builds its tiny models and control store when a run starts")
        return report
    readout = check(
        lambda: make_readout(options.token_pooling, options.sae, options.latent_pooling)  # type: ignore[arg-type]
    )
    store = None
    if readout is not None:
        store = check(
            lambda: open_controls(options.controls_root, options.model, options.layer, readout)
        )
    recipe = None
    if store is not None:
        check(
            lambda: selection.resolve(options.neurons, store.n_units, options.seed, options.layer)
        )
        recipe = check(lambda: store_preprocessing(options, store))
    versions = check(lambda: resolve_models(options))
    report["models"] = asdict(versions) if versions is not None else None
    if None in (device, store, recipe, versions, readout):
        notes.append("no memory plan: fix the problems above first")
        return report
    job = ExplainJob(options, versions, store.index["dtype"], recipe, readout)
    budget = check(lambda: planned_budget(options, device))
    if budget is None:
        return report
    plan = check(lambda: explain_plan(job, device, budget))
    if plan is not None:
        report["memory_plan"] = plan.record()
        report["plan"] = plan.line()
    return report


def planned_device(options: ExplainOptions) -> str:
    """The run's device; an explicit accelerator this machine lacks is planned for (with
    --gpu-memory) rather than refused."""
    from nacosae.models.devices import resolve_device

    if options.device.startswith("cuda") or options.device == "mps":
        try:
            return resolve_device(options.device)
        except NacosaeError:
            if options.gpu_memory is None:
                raise NacosaeError(
                    f"--device {options.device} is not on this machine: give --gpu-memory G "
                    "to plan for a card of G GiB"
                ) from None
            return options.device
    return resolve_device(options.device)


def planned_budget(options: ExplainOptions, device: str) -> float:
    from nacosae.models.memory import memory_budget

    return memory_budget(device, options.gpu_memory)
