"""Tests for the metrics: hypervolume against brute force, HV history, fronts, diversity and robustness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhnas.metrics import (
    energy_range_decades,
    hypervolume,
    hypervolume_history,
    mean_pairwise_distance,
    normalise_points,
    pareto_front_mask,
    reference_point,
    robustness_summary,
)


def brute_hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D HV by a sweep in x: each point adds the strip below the lowest y seen so far."""
    inside = [p for p in points if p[0] < ref[0] and p[1] < ref[1]]
    area, y_top = 0.0, ref[1]
    for x, y in sorted(inside, key=lambda p: (p[0], p[1])):
        if y < y_top:
            area += (ref[0] - x) * (y_top - y)
            y_top = y
    return area


def grid_hv_3d(points: np.ndarray, ref: int) -> int:
    """Exact 3-D HV for integer points: count unit cells [c, c+1)^3 below ref that some point weakly dominates."""
    count = 0
    for c in itertools.product(range(ref), repeat=3):
        if any(all(p[d] <= c[d] for d in range(3)) for p in points):
            count += 1
    return count


coords = st.floats(-2.0, 3.0, allow_nan=False, allow_infinity=False)
points_2d = st.lists(st.tuples(coords, coords), min_size=0, max_size=12)


@settings(max_examples=80, deadline=None)
@given(points_2d)
def test_hv_2d_matches_sweep(pts) -> None:
    P = np.array(pts, dtype=float).reshape(-1, 2)
    ref = np.array([1.0, 2.0])
    assert hypervolume(P, ref) == pytest.approx(brute_hv_2d(P, ref), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 5)] * 3), min_size=1, max_size=6))
def test_hv_3d_matches_grid_count(pts) -> None:
    P = np.array(pts, dtype=float)
    assert hypervolume(P, [4.0, 4.0, 4.0]) == pytest.approx(grid_hv_3d(P, 4))


@settings(max_examples=60, deadline=None)
@given(points_2d, st.lists(st.tuples(coords, coords), min_size=1, max_size=6))
def test_points_outside_the_box_add_nothing(inside, extra) -> None:
    ref = np.array([1.0, 2.0])
    P = np.array(inside, dtype=float).reshape(-1, 2)
    # Push every extra point onto or beyond the reference in at least its first coordinate.
    outside = np.array(extra, dtype=float)
    outside[:, 0] = ref[0] + np.abs(outside[:, 0])
    assert hypervolume(np.vstack([P, outside]), ref) == pytest.approx(hypervolume(P, ref))


def test_hv_simple_cases() -> None:
    assert hypervolume(np.empty((0, 2)), [1, 1]) == 0.0
    assert hypervolume([[0.5, 0.5]], [1, 1]) == pytest.approx(0.25)
    assert hypervolume([[1.0, 0.0]], [1, 1]) == 0.0  # on the boundary: not strictly better
    assert hypervolume([[np.nan, 0.0], [0.5, 0.5]], [1, 1]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        hypervolume([[0.5, 0.5]], [1, 1, 1])


def test_normalise_and_reference_point() -> None:
    P = normalise_points([0.1, 0.5], [1.0, 1000.0])
    np.testing.assert_allclose(P, [[0.1, 0.0], [0.5, 3.0]])
    np.testing.assert_allclose(reference_point(1e4), [1.0, 4.1])
    np.testing.assert_allclose(reference_point(100.0, margin_decades=0.5), [1.0, 2.5])
    with pytest.raises(ValueError):
        normalise_points([0.1], [0.0])
    with pytest.raises(ValueError):
        reference_point(-1.0)


def test_history_hand_worked_example() -> None:
    # ref (1, 3); points in (error, log10 nJ): a=(0.5,1) b=(0.2,2) c=(0.6,0) d=(0.1,5) infeasible e.
    # after a: 0.5*2 = 1.0
    # after b: + [0.2,1]x[2,3] (0.8) - overlap [0.5,1]x[2,3] (0.5) = 1.3
    # after c: + [0.6,1]x[0,3] (1.2) - overlap [0.6,1]x[1,3] (0.8) = 1.7
    # d is outside the box (log10 > 3), e is infeasible: both leave 1.7.
    errors = [0.5, 0.2, 0.6, 0.1, 0.0]
    energies = [10.0, 100.0, 1.0, 1e5, 1e-3]
    feasible = [True, True, True, True, False]
    hist = hypervolume_history(errors, energies, feasible, [1.0, 3.0])
    np.testing.assert_allclose(hist, [1.0, 1.3, 1.7, 1.7, 1.7])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(1e-2, 1e4), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_history_is_monotone_and_ends_at_feasible_hv(rows) -> None:
    errors, energies, feasible = (np.array(c) for c in zip(*rows))
    ref = reference_point(1e3)
    hist = hypervolume_history(errors, energies, feasible, ref)
    assert hist.shape == (len(rows),)
    assert np.all(np.diff(hist) >= -1e-12)
    pts = normalise_points(errors, energies)[feasible.astype(bool)]
    assert hist[-1] == pytest.approx(hypervolume(pts, ref), abs=1e-12)
    # Each prefix too, checked on a few positions.
    for i in {0, len(rows) // 2, len(rows) - 1}:
        mask = feasible[: i + 1].astype(bool)
        expect = hypervolume(normalise_points(errors[: i + 1], energies[: i + 1])[mask], ref)
        assert hist[i] == pytest.approx(expect, abs=1e-12)


def test_history_handles_a_thousand_evaluations() -> None:
    rng = np.random.default_rng(3)
    n = 1000
    errors = rng.uniform(0, 1, n)
    energies = 10 ** rng.uniform(-1, 4, n)
    feasible = rng.random(n) < 0.8
    ref = reference_point(1e4)
    hist = hypervolume_history(errors, energies, feasible, ref)
    assert hist[-1] == pytest.approx(hypervolume(normalise_points(errors, energies)[feasible], ref))


def test_pareto_front_mask() -> None:
    # (1,5) (2,3) (4,1) are mutually non-dominated; (3,4) is dominated by (2,3); (4,1) is infeasible.
    F = np.array([[1, 5], [2, 3], [4, 1], [3, 4]], dtype=float)
    assert pareto_front_mask(F).tolist() == [True, True, True, False]
    assert pareto_front_mask(F, [0, 0, 0.2, 0]).tolist() == [True, True, False, False]
    # All infeasible: the least violating ones form the first front.
    assert pareto_front_mask(F, [0.3, 0.1, 0.1, 0.2]).tolist() == [False, True, True, False]


def test_mean_pairwise_distance() -> None:
    dist = lambda a, b: abs(a - b)  # noqa: E731
    assert mean_pairwise_distance([], dist) == 0.0
    assert mean_pairwise_distance([3.0], dist) == 0.0
    # pairs: |0-1|=1, |0-4|=4, |1-4|=3 -> mean 8/3
    assert mean_pairwise_distance([0.0, 1.0, 4.0], dist) == pytest.approx(8 / 3)
    # 4 items, 6 pairs: 1 + 4 + 6 + 3 + 5 + 2 = 21 -> 3.5
    assert mean_pairwise_distance([0.0, 1.0, 4.0, 6.0], dist) == pytest.approx(3.5)


def test_energy_range_decades() -> None:
    assert energy_range_decades([0.1, 5.0, 1000.0]) == pytest.approx(4.0)
    assert energy_range_decades([7.0]) == 0.0
    assert energy_range_decades([]) == 0.0
    with pytest.raises(ValueError):
        energy_range_decades([1.0, 0.0])


def test_robustness_summary() -> None:
    s = robustness_summary([0.9, 0.8], [0.85, 0.6], [0.8, 0.5])
    assert s["mean_drop"] == pytest.approx(0.125)
    assert s["max_drop"] == pytest.approx(0.2)
    assert s["mean_p5"] == pytest.approx(0.65)
    assert s["min_p5"] == pytest.approx(0.5)
    assert s["n"] == 2
    with pytest.raises(ValueError):
        robustness_summary([0.9], [0.8, 0.7], [0.6])
