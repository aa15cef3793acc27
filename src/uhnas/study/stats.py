"""Statistics of a study: summaries over seeds, two-sided rank tests with Holm correction, Vargha-Delaney A12.

- `describe`: n, median, IQR (25th and 75th percentiles, linear interpolation), min, max, mean.
- `compare`: Mann-Whitney U (two-sided; exact for small samples without ties, SciPy's default) between two
  independent groups, or the Wilcoxon signed-rank test (two-sided, exact for small samples) when the groups ran
  the same seeds and pairing is asked for; the p-value of identical samples is 1.
- `holm`: Holm-Bonferroni adjusted p-values of one family of comparisons (step-down, monotone, capped at 1).
- `a12`: Vargha-Delaney A = P(X > Y) + P(X = Y) / 2 (0.5: no effect; for hypervolume, > 0.5 means X is better),
  with the conventional magnitude labels (negligible < 0.56 <= small < 0.64 <= medium < 0.71 <= large, and
  symmetric below 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, median, q25, q75, iqr, min, max and mean of the finite values (None where empty)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "q25": None, "q75": None, "iqr": None, "min": None, "max": None, "mean": None}
    q25, median, q75 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    return {
        "n": int(v.size),
        "median": median,
        "q25": q25,
        "q75": q75,
        "iqr": q75 - q25,
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
    }


def a12(x: Sequence[float], y: Sequence[float]) -> float:
    """Vargha-Delaney A12: the probability that a value of x exceeds one of y, ties counting half."""
    if not len(x) or not len(y):
        return math.nan
    greater = sum(1.0 for a in x for b in y if a > b)
    ties = sum(1.0 for a in x for b in y if a == b)
    return (greater + 0.5 * ties) / (len(x) * len(y))


def a12_magnitude(value: float) -> str:
    """negligible, small, medium or large (Vargha and Delaney 2000 thresholds on |A - 0.5|)."""
    if not math.isfinite(value):
        return "n/a"
    d = abs(value - 0.5)
    return "negligible" if d < 0.06 else "small" if d < 0.14 else "medium" if d < 0.21 else "large"


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U of x against y: (U of x, p); p = 1 for identical samples."""
    from scipy.stats import mannwhitneyu

    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan
    if len(set(x) | set(y)) == 1:
        return len(x) * len(y) / 2.0, 1.0
    result = mannwhitneyu(x, y, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def wilcoxon_signed_rank(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired samples: (statistic, p); p = 1 when all differences are 0."""
    from scipy.stats import wilcoxon

    if len(x) != len(y) or len(x) == 0:
        return math.nan, math.nan
    if all(a == b for a, b in zip(x, y)):
        return 0.0, 1.0
    result = wilcoxon(x, y, alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (NaN stays NaN and is not counted)."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def compare(
    x: Sequence[float],
    y: Sequence[float],
    x_seeds: Sequence[int] | None = None,
    y_seeds: Sequence[int] | None = None,
    paired: bool = True,
) -> dict[str, Any]:
    """Test x against y: Wilcoxon signed-rank when paired and both ran the same seeds once each, else Mann-Whitney."""
    same = (
        paired
        and x_seeds is not None
        and y_seeds is not None
        and len(x_seeds) == len(set(x_seeds)) == len(y_seeds) == len(set(y_seeds))
        and set(x_seeds) == set(y_seeds)
        and len(x) >= 2
    )
    if same:
        assert x_seeds is not None and y_seeds is not None
        order_x = {s: v for s, v in zip(x_seeds, x)}
        order_y = {s: v for s, v in zip(y_seeds, y)}
        seeds = sorted(order_x)
        statistic, p = wilcoxon_signed_rank([order_x[s] for s in seeds], [order_y[s] for s in seeds])
        test = "wilcoxon"
    else:
        statistic, p = mann_whitney(x, y)
        test = "mann-whitney"
    effect = a12(x, y)
    return {
        "test": test,
        "statistic": statistic,
        "p": p,
        "a12": effect,
        "magnitude": a12_magnitude(effect),
        "n_x": len(x),
        "n_y": len(y),
    }


def spearman_kendall(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau-b with their two-sided p-values (None where undefined: n < 3 or constant)."""
    from scipy.stats import kendalltau, spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None, "n": len(x)}
    rho = spearmanr(x, y)
    tau = kendalltau(x, y)
    return {
        "spearman": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "kendall": float(tau.statistic),
        "kendall_p": float(tau.pvalue),
        "n": len(x),
    }


__all__ = [
    "a12",
    "a12_magnitude",
    "compare",
    "describe",
    "holm",
    "mann_whitney",
    "spearman_kendall",
    "wilcoxon_signed_rank",
]
