"""CoSy's scores of one explanation, and summary statistics over many.

Definitions (as CoSy computes them): U1 and p are scipy's `mannwhitneyu(control, synthetic)`
(two-sided); AUC is the ROC-AUC with control images labelled 0 and synthetic images 1 (ties one
half), equal to 1 - U1 / (n_control * n_synthetic); MAD = (mean_synthetic - mean_control) /
std_control with numpy's default (population) standard deviation, which CoSy uses. Beside them
(not CoSy's): AUPRC (average precision, synthetic images positive) and the point-biserial
correlation, the two scores that pass NeuronEval's sanity checks (search/scoring.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0


def mad_population_std(control: np.ndarray, synthetic: np.ndarray) -> float:
    """CoSy's MAD: the mean difference in units of the controls' *population* standard deviation
    (numpy's default, n in the denominator); NaN when the controls do not spread. Not the
    search's `mad` (`search.scoring.mad_sample_std`, the original project's)."""
    std = float(np.std(control))
    return float((np.mean(synthetic) - np.mean(control)) / std) if std > 0 else float("nan")


def cosy_scores(control: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """CoSy's columns (see the module docstring); `MAD` is `mad_population_std`."""
    from scipy.stats import mannwhitneyu

    control = np.asarray(control, dtype=np.float64)
    synthetic = np.asarray(synthetic, dtype=np.float64)
    result = mannwhitneyu(control, synthetic, alternative="two-sided")
    from nacosae.search.scoring import average_precision, point_biserial

    u1 = float(result.statistic)
    return {
        "AUC": 1.0 - u1 / (len(control) * len(synthetic)),
        "U1": u1,
        "p": float(result.pvalue),
        "MAD": mad_population_std(control, synthetic),
        "AUPRC": average_precision(control, synthetic),
        "correlation": point_biserial(control, synthetic),
    }


def summarise(values: list[float]) -> dict[str, Any]:
    """Mean, std (sample), median, n and a percentile-bootstrap 95% interval of the mean."""
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(data) == 0:
        return {"n": 0}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = rng.choice(data, size=(BOOTSTRAP_SAMPLES, len(data)), replace=True).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "n": int(len(data)),
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if len(data) > 1 else 0.0,
        "median": float(np.median(data)),
        "mean_ci95": [float(low), float(high)],
        "ci_method": f"percentile bootstrap, {BOOTSTRAP_SAMPLES} resamples, seed {BOOTSTRAP_SEED}",
    }
