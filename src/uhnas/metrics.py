"""Run metrics: Pareto domination, hypervolume (moocore), diversity and robustness summaries.

All objectives are minimised. The objective space uhnas reports in is two-dimensional:
``(error, log10(energy in nJ))``, see :func:`normalise_points`.

The constrained-domination rule lives here (not in ``search/``) because metrics sit below the search
in the import graph: ``search.selection`` builds NSGA-II on top of :func:`dominance_matrix`, and the
metrics never import from ``search``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import moocore
import numpy as np
from numpy.typing import ArrayLike, NDArray

T = TypeVar("T")

#: Default margin, in decades of energy, added above the caller's upper energy bound for the HV reference.
DEFAULT_ENERGY_MARGIN_DECADES = 0.1


def _as_objectives(F: ArrayLike) -> NDArray[np.float64]:
    """Return F as a float (n, m) array, so that a single objective column or row is never ambiguous."""
    arr = np.asarray(F, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"objectives must be a 2-D array (n, m), got shape {arr.shape}")
    return arr


def _as_violation(V: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """Return V as a float (n,) array of total violations; None means all feasible, NaN counts as +inf."""
    if V is None:
        return np.zeros(n)
    v = np.asarray(V, dtype=np.float64).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"violation has {v.shape[0]} entries for {n} points")
    if np.any(v < 0):
        raise ValueError("total violation must be >= 0 (0 means feasible)")
    return np.where(np.isnan(v), np.inf, v)


def dominance_matrix(F: ArrayLike, V: ArrayLike | None = None) -> NDArray[np.bool_]:
    """Return D with D[i, j] True when point i constrained-dominates point j (Deb 2000), vectorised.

    The rule, applied in order:
      1. a point with any NaN objective is *invalid* (e.g. a failed evaluation) and is dominated by every
         valid point, whatever its violation;
      2. a smaller total violation wins (so feasible, V = 0, beats infeasible, and of two infeasible points
         the less violating wins);
      3. equal violations (both feasible, or exactly equal positive violations) fall back to Pareto
         dominance on the objectives, with NaN read as +inf (the worst value).
    """
    F = _as_objectives(F)
    n = F.shape[0]
    v = _as_violation(V, n)
    invalid: NDArray[np.bool_] = np.asarray(np.isnan(F).any(axis=1))
    G = np.where(np.isnan(F), np.inf, F)
    le = (G[:, None, :] <= G[None, :, :]).all(axis=2)
    lt = (G[:, None, :] < G[None, :, :]).any(axis=2)
    pareto = le & lt
    same_validity = invalid[:, None] == invalid[None, :]
    by_validity = ~invalid[:, None] & invalid[None, :]
    by_violation = v[:, None] < v[None, :]
    same_violation = v[:, None] == v[None, :]
    return np.asarray(by_validity | (same_validity & (by_violation | (same_violation & pareto))), dtype=np.bool_)


def pareto_front_mask(F: ArrayLike, V: ArrayLike | None = None) -> NDArray[np.bool_]:
    """Return a boolean mask of the first front: the points no other point constrained-dominates."""
    return np.asarray(~dominance_matrix(F, V).any(axis=0), dtype=np.bool_)


def normalise_points(error: ArrayLike, energy_nj: ArrayLike) -> NDArray[np.float64]:
    """Map (error in [0, 1], energy in nJ) to uhnas's objective space (error, log10 nJ), shape (n, 2).

    Energy spans decades across hardware, so it is compared on a log scale; error is kept as is.
    NaN passes through (it marks a failed evaluation); non-positive energies are rejected.
    """
    e = np.asarray(error, dtype=np.float64).reshape(-1)
    j = np.asarray(energy_nj, dtype=np.float64).reshape(-1)
    if e.shape != j.shape:
        raise ValueError(f"error has {e.shape[0]} entries, energy has {j.shape[0]}")
    if np.any(j <= 0):
        raise ValueError("energy must be > 0 nJ to take its log10")
    return np.column_stack([e, np.log10(j)])


def reference_point(
    energy_upper_nj: float,
    margin_decades: float = DEFAULT_ENERGY_MARGIN_DECADES,
    error_ref: float = 1.0,
) -> NDArray[np.float64]:
    """Return the frozen HV reference (error_ref, log10(energy_upper_nj) + margin_decades) for a run.

    Freeze it at the start of a run from the backend/space bounds so that HV values stay comparable
    across generations and methods. Error never exceeds 1, so 1.0 is the natural bound (a model at
    error 1 contributes nothing, as it should). The energy margin (default 0.1 decade, about +26 %)
    keeps candidates that sit at the caller's upper energy bound inside the box with a non-zero share.
    """
    if not energy_upper_nj > 0:
        raise ValueError("energy_upper_nj must be > 0")
    if margin_decades < 0:
        raise ValueError("margin_decades must be >= 0")
    return np.array([float(error_ref), float(np.log10(energy_upper_nj)) + float(margin_decades)])


def _inside_box(points: NDArray[np.float64], ref: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Return the mask of finite points strictly better than ref in every objective."""
    return np.asarray(np.isfinite(points).all(axis=1) & (points < ref).all(axis=1), dtype=np.bool_)


def _as_ref(ref: ArrayLike, m: int) -> NDArray[np.float64]:
    """Return ref as a float (m,) array, checking it matches the points' dimension."""
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    if r.shape[0] != m:
        raise ValueError(f"reference has {r.shape[0]} coordinates for {m}-objective points")
    return r


def hypervolume(points: ArrayLike, ref: ArrayLike) -> float:
    """Return the hypervolume (minimisation) of points w.r.t. ref; points not strictly inside the box add 0."""
    P = np.asarray(points, dtype=np.float64)
    if P.size == 0:
        return 0.0
    P = _as_objectives(P)
    r = _as_ref(ref, P.shape[1])
    P = P[_inside_box(P, r)]
    if P.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(P, ref=r))


def hypervolume_history(
    errors: ArrayLike, energies: ArrayLike, feasible: ArrayLike, ref: ArrayLike
) -> NDArray[np.float64]:
    """Return the HV of the feasible set after each evaluation, in evaluation order (ref in normalised space).

    Keeps the current non-dominated set and recomputes HV (moocore) only when a new point enters it,
    so the cost is O(n * |front|) plus one HV call per improvement.
    """
    P = normalise_points(errors, energies)
    ok = np.asarray(feasible, dtype=bool).reshape(-1)
    if ok.shape[0] != P.shape[0]:
        raise ValueError(f"feasible has {ok.shape[0]} entries for {P.shape[0]} evaluations")
    r = _as_ref(ref, 2)
    usable = ok & _inside_box(P, r)
    out = np.zeros(P.shape[0])
    front = np.empty((0, 2))
    current = 0.0
    for i in range(P.shape[0]):
        if usable[i]:
            p = P[i]
            if not (front <= p).all(axis=1).any():
                keep = ~(p <= front).all(axis=1)
                front = np.vstack([front[keep], p])
                current = float(moocore.hypervolume(front, ref=r))
        out[i] = current
    return out


def mean_pairwise_distance(items: Sequence[T], distance: Callable[[T, T], float]) -> float:
    """Return the mean of distance(a, b) over unordered pairs; 0.0 for fewer than 2 items.

    The structural distance between architectures is supplied by the caller, so this stays IR-agnostic.
    """
    n = len(items)
    if n < 2:
        return 0.0
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            total += float(distance(items[i], items[j]))
    return total / (n * (n - 1) / 2)


def energy_range_decades(energies_nj: ArrayLike) -> float:
    """Return log10(max / min) of the finite energies given (decades spanned); 0.0 for an empty set."""
    e = np.asarray(energies_nj, dtype=np.float64).reshape(-1)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return 0.0
    if np.any(e <= 0):
        raise ValueError("energies must be > 0 nJ")
    return float(np.log10(e.max() / e.min()))


def robustness_summary(clean_acc: ArrayLike, noisy_mean_acc: ArrayLike, noisy_p5_acc: ArrayLike) -> dict[str, float]:
    """Summarise accuracy lost to hardware non-idealities over a set of models.

    Returns ``mean_drop`` (mean of clean - noisy mean), ``max_drop``, ``mean_p5`` and ``min_p5``
    (the 5th-percentile accuracy over Monte-Carlo draws: the worst typical case), and ``n``.
    """
    c = np.asarray(clean_acc, dtype=np.float64).reshape(-1)
    m = np.asarray(noisy_mean_acc, dtype=np.float64).reshape(-1)
    p5 = np.asarray(noisy_p5_acc, dtype=np.float64).reshape(-1)
    if not (c.shape == m.shape == p5.shape):
        raise ValueError("clean, noisy mean and noisy p5 accuracies must have the same length")
    if c.size == 0:
        raise ValueError("robustness_summary needs at least one model")
    drop = c - m
    return {
        "mean_drop": float(drop.mean()),
        "max_drop": float(drop.max()),
        "mean_p5": float(p5.mean()),
        "min_p5": float(p5.min()),
        "n": int(c.size),
    }
