"""The original project's published data read by nacosae; prints JSON lines.

- `import`: its ResNet-50 `avgpool` control activations (one `.pt` per class, from its
  `analysis` branch) imported into a store (`controls --from-original`'s code): seconds, rows,
  and the largest difference between the store's class means and the means of the `.pt` files.
- `top_classes`: for every unit of its 100-unit table (`resnet50_avgpool_100n.csv`) whose final
  concept is a control class ("predefined"), that class's rank among the unit's classes by
  class mean (`top-images --classes`): the original starts its history from the top 5.

Get the data: `git clone -b analysis https://github.com/GasparSekula/NaCoSAE` and run
`uv run python benchmarks/original_data.py --original NaCoSAE/analysis/results/
control_activations/resnet50/avgpool --table NaCoSAE/analysis/results/dataframes/
resnet50_avgpool_100n.csv` (about a minute on 2 CPU cores; needs 2 GB of memory and disk).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, required=True, help="a .pt folder per class")
    parser.add_argument("--table", type=Path, help="the original's 100-unit run table (CSV)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="avgpool")
    args = parser.parse_args()

    from nacosae.controls.from_original import import_original, list_original, load_plain_tensor
    from nacosae.evaluation.top_images import top_classes
    from nacosae.store.activations import ControlStore

    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        result = import_original(args.original, args.model, args.layer, "default", Path(home))
        seconds = time.perf_counter() - started
        store = ControlStore(result.directory)
        means = store.class_means()
        worst = 0.0
        for index, item in enumerate(list_original(args.original)):
            expected = load_plain_tensor(item.files[0]).double().mean(dim=0)
            worst = max(worst, float((means[index].double() - expected).abs().max()))
        print(
            json.dumps(
                {
                    "check": "import",
                    "seconds": round(seconds, 2),
                    "rows": store.n_images,
                    "units": store.n_units,
                    "classes": len(store.classes),
                    "weights": store.index["weights"],
                    "max_abs_class_mean_difference": worst,
                    "dtype": store.index["dtype"],
                }
            )
        )
        if args.table is None:
            return
        ranks = []
        with args.table.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("concept_type") != "predefined":
                    continue
                neuron = int(row["neuron"])
                order = [
                    c.class_folder.replace("_", " ")
                    for c in top_classes(store, neuron, k=len(store.classes))
                ]
                rank = order.index(row["concept"]) + 1 if row["concept"] in order else None
                ranks.append(rank)
                print(
                    json.dumps(
                        {"check": "unit", "neuron": neuron, "concept": row["concept"], "rank": rank}
                    )
                )
        found = [r for r in ranks if r is not None]
        print(
            json.dumps(
                {
                    "check": "top_classes",
                    "predefined_units": len(ranks),
                    "class_found": len(found),
                    "rank_1": sum(r == 1 for r in found),
                    "in_top_5": sum(r <= 5 for r in found),
                    "ranks": ranks,
                }
            )
        )


if __name__ == "__main__":
    main()
