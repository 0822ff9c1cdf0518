"""How well a concept's synthetic images drive a unit, compared with the control images.

All metrics are computed for every concept; `--metric` only picks the one that steers:
- auc: ROC-AUC with control images labelled 0 and synthetic images 1 (ties count one half);
- mad: (mean_synthetic - mean_control) / std_control, with the sample standard deviation of the
  control activations (n - 1 in the denominator); when it is 0 or undefined (fewer than two
  control images) the difference is divided by 1, as the original does, so a sparse unit that
  is silent on its controls keeps its signal;
- mean: the mean activation on the synthetic images (no standard deviation involved);
- u1, p: the Mann-Whitney U of the control sample and its two-sided p-value, as in the CoSy
  evaluation files (so that auc = 1 - u1 / (n_control * n_synthetic));
- auprc: average precision with the synthetic images as positives (precision at each distinct
  activation, weighted by the recall it adds, as scikit-learn's `average_precision_score`);
- correlation: the point-biserial correlation of the activation with being synthetic (Pearson's r
  against 0/1 labels, as scipy's `pointbiserialr`); when the activations do not vary it is
  undefined (NaN in `evaluate`), and 0 here, where it steers the search.
AUC and recall-like scores fail NeuronEval's extra-label sanity test (Oikarinen et al., ICML
2025); AUPRC and correlation pass it.
"""

from __future__ import annotations

import numpy as np

METRICS: tuple[str, ...] = ("auc", "mad", "mean", "auprc", "correlation")


def auc_from_u1(u1: float, n_control: int, n_synthetic: int) -> float:
    """ROC-AUC (ties count one half) from the control sample's Mann-Whitney U."""
    return 1.0 - u1 / (n_control * n_synthetic)


def mad_sample_std(control: np.ndarray, synthetic: np.ndarray) -> float:
    """The search's `mad`: the mean difference in units of the controls' *sample* standard
    deviation (n - 1), divided by 1 when that is 0 or undefined (see the module docstring).
    Not the evaluation's MAD (`evaluation.metrics.mad_population_std`, CoSy's)."""
    std = float(np.std(control, ddof=1)) if len(control) > 1 else 0.0
    return float((np.mean(synthetic) - np.mean(control)) / (std if std > 0.0 else 1.0))


def average_precision(control: np.ndarray, synthetic: np.ndarray) -> float:
    """AUPRC with synthetic images positive: the sum over distinct activations (highest first)
    of precision times the recall gained there; tied activations enter together."""
    values = np.concatenate([control, synthetic]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(control)), np.ones(len(synthetic))])
    order = np.argsort(-values, kind="stable")
    values, labels = values[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(values))[0], len(values) - 1]
    true_positives = np.cumsum(labels)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall = true_positives / max(len(synthetic), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def point_biserial(control: np.ndarray, synthetic: np.ndarray) -> float:
    """Pearson's r between the activations and the labels (control 0, synthetic 1)."""
    values = np.concatenate([control, synthetic]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(control)), np.ones(len(synthetic))])
    if np.std(values) == 0 or np.std(labels) == 0:
        return float("nan")
    return float(np.corrcoef(values, labels)[0, 1])


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
        "auprc": average_precision(control, synthetic),
        "correlation": np.nan_to_num(point_biserial(control, synthetic)),  # steers: 0 if flat
    }
    return {k: float(f"{v:.8g}") for k, v in values.items()}
