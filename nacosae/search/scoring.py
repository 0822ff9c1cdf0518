"""How well a concept's synthetic images drive a unit, compared with the control images.

All metrics are computed for every concept; `--metric` only picks the one that steers:
- auc: ROC-AUC with control images labelled 0 and synthetic images 1 (ties count one half);
- mad: (mean_synthetic - mean_control) / std_control, with the sample standard deviation of the
  control activations (n - 1 in the denominator); when it is 0 or undefined (fewer than two
  control images) the difference is divided by 1, as the original does, so a sparse unit that
  is silent on its controls keeps its signal;
- mean: the mean activation on the synthetic images (no standard deviation involved);
- u1, p: the Mann-Whitney U of the control sample and its two-sided p-value, as in the CoSy
  evaluation files (so that auc = 1 - u1 / (n_control * n_synthetic)).
"""

from __future__ import annotations

import numpy as np

METRICS: tuple[str, ...] = ("auc", "mad", "mean")


def auc_from_u1(u1: float, n_control: int, n_synthetic: int) -> float:
    """ROC-AUC (ties count one half) from the control sample's Mann-Whitney U."""
    return 1.0 - u1 / (n_control * n_synthetic)


def mad_sample_std(control: np.ndarray, synthetic: np.ndarray) -> float:
    """The search's `mad`: the mean difference in units of the controls' *sample* standard
    deviation (n - 1), divided by 1 when that is 0 or undefined (see the module docstring).
    Not the evaluation's MAD (`evaluation.metrics.mad_population_std`, CoSy's)."""
    std = float(np.std(control, ddof=1)) if len(control) > 1 else 0.0
    return float((np.mean(synthetic) - np.mean(control)) / (std if std > 0.0 else 1.0))


def mann_whitney(control: np.ndarray, synthetic: np.ndarray) -> tuple[float, float]:
    from scipy.stats import mannwhitneyu

    result = mannwhitneyu(control, synthetic, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def score_all(control: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """Every metric for one concept (values rounded to 8 significant digits for stable logs)."""
    control = np.asarray(control, dtype=np.float64)
    synthetic = np.asarray(synthetic, dtype=np.float64)
    u1, p = mann_whitney(control, synthetic)
    values = {
        "auc": auc_from_u1(u1, len(control), len(synthetic)),
        "mad": mad_sample_std(control, synthetic),
        "mean": float(np.mean(synthetic)),
        "u1": u1,
        "p": p,
    }
    return {k: float(f"{v:.8g}") for k, v in values.items()}
