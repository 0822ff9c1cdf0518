"""Methods compared on the neurons they share, with the paired test the original analysis chose:
Shapiro-Wilk on the paired differences; a paired t-test when it does not reject normality at 0.05,
else the Wilcoxon signed-rank test."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from nacosae.errors import NacosaeError
from nacosae.textfiles import csv_text

METRICS = ("AUC", "MAD")
NORMALITY_ALPHA = 0.05


@dataclass(frozen=True)
class PairResult:
    method_a: str
    method_b: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float  # a - b
    shapiro_p: float
    test: str  # "paired t-test" or "Wilcoxon signed-rank"
    p: float


def method_name(path: Path) -> str:
    """`evaluation_CLIP-Dissect_resnet50_places-avgpool.csv` -> `CLIP-Dissect`; a run's
    `.../evaluation.csv` -> its folder name."""
    stem = path.stem
    if stem == "evaluation":
        return path.parent.name
    return stem.removeprefix("evaluation_").split("_")[0] or stem


def read_scores(path: Path) -> dict[int, dict[str, float]]:
    """neuron -> {AUC, MAD} of an evaluation CSV (the first row of each neuron: its best)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NacosaeError(f"evaluation file {path} does not exist")
    with csv_text(path, "evaluation file") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("neuron", *METRICS) if c not in (reader.fieldnames or [])]
        if missing:
            raise NacosaeError(
                f"{path} lacks the column(s) {', '.join(missing)}: compare reads evaluation CSVs "
                "(neuron,concept,AUC,U1,p,MAD), e.g. those `nacosae evaluate` writes"
            )
        scores: dict[int, dict[str, float]] = {}
        for row_number, row in enumerate(reader, start=2):
            try:
                neuron = int(row["neuron"])
                values = {m: float(row[m]) for m in METRICS}
            except (TypeError, ValueError):
                raise NacosaeError(
                    f"{path} row {row_number}: a neuron or score is not a number"
                ) from None
            scores.setdefault(neuron, values)
    return scores


def paired_test(a: list[float], b: list[float]) -> tuple[float, str, float]:
    """(Shapiro-Wilk p of the differences, the test chosen, its two-sided p)."""
    import numpy as np
    from scipy import stats

    differences = np.asarray(a) - np.asarray(b)
    if not differences.any():
        return float("nan"), "none (identical scores)", 1.0
    shapiro_p = float(stats.shapiro(differences).pvalue) if len(a) >= 3 else float("nan")
    if shapiro_p >= NORMALITY_ALPHA:
        return shapiro_p, "paired t-test", float(stats.ttest_rel(a, b).pvalue)
    return shapiro_p, "Wilcoxon signed-rank", float(stats.wilcoxon(a, b).pvalue)


def compare(paths: list[Path]) -> tuple[list[PairResult], dict[str, dict[int, dict[str, float]]]]:
    if len(paths) < 2:
        raise NacosaeError("--compare needs at least two evaluation CSVs")
    methods: dict[str, dict[int, dict[str, float]]] = {}
    for path in paths:
        name = method_name(Path(path))
        if name in methods:
            name = f"{name} ({Path(path).name})"
        methods[name] = read_scores(Path(path))
    results = []
    for (name_a, a), (name_b, b) in combinations(methods.items(), 2):
        shared = sorted(set(a) & set(b))
        if len(shared) < 3:
            raise NacosaeError(
                f"{name_a} and {name_b} share {len(shared)} neurons: a paired test needs at least 3"
            )
        for metric in METRICS:
            xs, ys = [a[n][metric] for n in shared], [b[n][metric] for n in shared]
            shapiro_p, test, p = paired_test(xs, ys)
            mean_a, mean_b = sum(xs) / len(xs), sum(ys) / len(ys)
            results.append(
                PairResult(
                    name_a,
                    name_b,
                    metric,
                    len(shared),
                    mean_a,
                    mean_b,
                    mean_a - mean_b,
                    shapiro_p,
                    test,
                    p,
                )  # fmt: skip
            )
    return results, methods


def as_json(results: list[PairResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def box_plot(methods: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    """One panel per metric, one box per method (all its neurons), axes labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS) + 1, 4))
    for axis, metric in zip(axes, METRICS, strict=True):
        data = [[v[metric] for v in scores.values()] for scores in methods.values()]
        axis.boxplot(data)
        axis.set_xticks(range(1, len(methods) + 1), list(methods), rotation=20)
        axis.set_ylabel(metric)
        axis.set_title(f"{metric} per neuron")
        if metric == "AUC":
            axis.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
            axis.legend(loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
