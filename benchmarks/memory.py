"""The memory plan `explain --dry-run` prints for one GPU of 12, 16, 24 and 48 GiB, on any
machine: sd-turbo + Llama-3.2-1B-Instruct (nacosae's default setting) and SDXL base +
Llama-3.1-8B-Instruct (the original's recommended one), both from the published configs in
`benchmarks/configs/` (weights counted on PyTorch's meta device), explaining a ResNet-50
`avgpool` unit. Prints one JSON line per setting and budget.

Run: `uv run python benchmarks/memory.py` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "default (sd-turbo + Llama-3.2-1B)": ("sd-turbo", "llama-3.2-1b-instruct.json"),
    "recommended (SDXL base + Llama-3.1-8B)": ("sdxl-base", "llama-3.1-8b-instruct.json"),
}
BUDGETS = (12, 16, 24, 48)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        os.environ.update(NACOSAE_HOME=str(root / "home"), HF_HUB_OFFLINE="1")
        from typer.testing import CliRunner

        from nacosae.cli import app
        from tests.configfolders import llm_config_folder, pipeline_config_folder
        from tests.conftest import write_image_tree

        runner = CliRunner()
        images = write_image_tree(root / "val", classes=2, per_class=2)
        store = ["controls", "--model", "resnet50", "--weights", "none", "--images", str(images)]
        built = runner.invoke(app, [*store, "--workers", "0", "--device", "cpu"])
        assert built.exit_code == 0, built.output
        for name, (t2i, llm) in SETTINGS.items():
            t2i_folder = pipeline_config_folder(t2i, root / t2i)
            llm_folder = llm_config_folder(llm, root / llm)
            for gib in BUDGETS:
                args = [
                    "explain", "--dry-run", "--neuron-id", "0", "--model", "resnet50",
                    "--weights", "none", "--device", "cuda", "--gpu-memory", str(gib),
                    "--t2i-model", str(t2i_folder), "--language-model", str(llm_folder),
                ]  # fmt: skip
                result = runner.invoke(app, args)
                report = json.loads(result.stdout)
                placements = report.get("memory_plan", {}).get("placements", [])
                print(
                    json.dumps(
                        {
                            "setting": name,
                            "gpu_gib": gib,
                            "problems": report["problems"],
                            "plan": {
                                p["kind"]: {
                                    "mode": p["mode"],
                                    "batch": p["batch"],
                                    "weights_gib": round(p["weights"] / 2**30, 2),
                                    "working_gib": round(p["working"] / 2**30, 2),
                                }
                                for p in placements
                            },
                            "line": report.get("plan"),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
