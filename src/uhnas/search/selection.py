"""NSGA-II survival and tournament selection under constraint domination (Deb 2000; Deb et al. 2002).

All objectives are minimised. ``F`` is an (n, m) objective array and ``V`` an (n,) array of total
constraint violation (0 = feasible). Pure numpy; every random choice comes from the caller's generator.

NaN objectives are treated as worst: a candidate with any NaN objective (e.g. a failed evaluation) is
dominated by every candidate without one, whatever their violations, and among such candidates NaN reads
as +inf. The full rule is documented on :func:`uhnas.metrics.dominance_matrix`, which this module builds on.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from uhnas.metrics import dominance_matrix

IntArray = NDArray[np.intp]
FloatArray = NDArray[np.float64]


def constrained_dominates(fa: ArrayLike, va: float, fb: ArrayLike, vb: float) -> bool:
    """Return True when candidate a constrained-dominates candidate b (feasibility, then violation, then Pareto)."""
    F = np.vstack([np.asarray(fa, dtype=np.float64).reshape(-1), np.asarray(fb, dtype=np.float64).reshape(-1)])
    return bool(dominance_matrix(F, [va, vb])[0, 1])


def nondominated_sort(F: ArrayLike, V: ArrayLike | None = None) -> list[IntArray]:
    """Return the fronts (ascending index arrays, best first) under constrained domination; O(m n^2)."""
    D = dominance_matrix(np.asarray(F, dtype=np.float64), V)
    n = D.shape[0]
    dominated_by = D.sum(axis=0)
    remaining = np.ones(n, dtype=bool)
    fronts: list[IntArray] = []
    while remaining.any():
        front = np.flatnonzero(remaining & (dominated_by == 0))
        fronts.append(front)
        remaining[front] = False
        dominated_by = dominated_by - D[front].sum(axis=0)
    return fronts


def _finite_columns(F: FloatArray) -> FloatArray:
    """Replace NaN/+inf by the column's largest finite value and -inf by its smallest (0 if none is finite)."""
    G = F.copy()
    for j in range(G.shape[1]):
        col = G[:, j]
        finite = np.isfinite(col)
        if not finite.any():
            col[:] = 0.0
            continue
        lo, hi = col[finite].min(), col[finite].max()
        col[np.isnan(col) | (col == np.inf)] = hi
        col[col == -np.inf] = lo
    return G


def crowding_distance(F_front: ArrayLike) -> FloatArray:
    """Return the crowding distance of each point of one front, normalised by each objective's range.

    Boundary points of each objective get +inf; fronts of 1-2 points are all +inf. An objective whose
    range over the front is zero separates nothing and contributes 0 to every point (and marks no
    boundary). Ties in an objective are ordered by index, so the result is deterministic. Non-finite
    values are clipped to the front's finite extremes first.
    """
    F = np.asarray(F_front, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"front objectives must be a 2-D array (n, m), got shape {F.shape}")
    n, m = F.shape
    if n <= 2:
        return np.full(n, np.inf)
    G = _finite_columns(F)
    d = np.zeros(n)
    for j in range(m):
        col = G[:, j]
        order = np.argsort(col, kind="stable")
        span = col[order[-1]] - col[order[0]]
        if span <= 0:
            continue
        d[order[1:-1]] += (col[order[2:]] - col[order[:-2]]) / span
        d[order[0]] = np.inf
        d[order[-1]] = np.inf
    return d


def survive(F: ArrayLike, V: ArrayLike | None, k: int) -> IntArray:
    """Return the indices of the k NSGA-II survivors: whole fronts first, the last one cut by crowding.

    The cut front is ordered by crowding distance descending, ties by ascending index. Survivors are
    returned in that order (fronts best first). If k >= n every index is returned.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    F = np.asarray(F, dtype=np.float64)
    chosen: list[int] = []
    for front in nondominated_sort(F, V):
        room = k - len(chosen)
        if room <= 0:
            break
        if front.size <= room:
            chosen.extend(front.tolist())
            continue
        cd = crowding_distance(F[front])
        order = np.lexsort((front, -cd))
        chosen.extend(front[order[:room]].tolist())
        break
    return np.asarray(chosen, dtype=np.intp)


def rank_and_crowding(F: ArrayLike, V: ArrayLike | None = None) -> tuple[IntArray, FloatArray]:
    """Return each candidate's front rank (0 = best) and its crowding distance within that front."""
    F = np.asarray(F, dtype=np.float64)
    n = F.shape[0]
    rank = np.zeros(n, dtype=np.intp)
    crowding = np.zeros(n)
    for r, front in enumerate(nondominated_sort(F, V)):
        rank[front] = r
        crowding[front] = crowding_distance(F[front])
    return rank, crowding


def binary_tournament(rank: ArrayLike, crowding: ArrayLike, n_pick: int, rng: np.random.Generator) -> IntArray:
    """Pick n_pick parent indices by binary tournaments between two distinct random candidates.

    Lower rank wins, then larger crowding distance, then a fair coin from rng (so the picks are a
    deterministic function of the generator state). With a single candidate it is always picked.
    """
    r = np.asarray(rank).reshape(-1)
    c = np.asarray(crowding, dtype=np.float64).reshape(-1)
    if r.shape != c.shape:
        raise ValueError("rank and crowding must have the same length")
    n = r.shape[0]
    if n_pick < 0:
        raise ValueError("n_pick must be >= 0")
    if n == 0:
        raise ValueError("cannot run a tournament on an empty population")
    if n == 1:
        return np.zeros(n_pick, dtype=np.intp)
    c = np.where(np.isnan(c), -np.inf, c)
    a = rng.integers(0, n, size=n_pick)
    b = (a + rng.integers(1, n, size=n_pick)) % n
    coin = rng.random(n_pick) < 0.5
    same_rank = r[a] == r[b]
    a_wins = (r[a] < r[b]) | (same_rank & ((c[a] > c[b]) | ((c[a] == c[b]) & coin)))
    return np.where(a_wins, a, b).astype(np.intp)
