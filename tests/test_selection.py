"""Tests for NSGA-II selection under constraint domination, against hand-worked examples and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhnas.search.selection import (
    binary_tournament,
    constrained_dominates,
    crowding_distance,
    nondominated_sort,
    rank_and_crowding,
    survive,
)

# Example 1 (all feasible, minimise both):
#   A0=(1,5) B1=(2,3) C2=(4,1) D3=(3,4) E4=(5,5) F5=(4,4) G6=(5,2)
#   A, B, C: none dominates another                     -> front 0 = {0, 1, 2}
#   D is dominated by B; G by C; D and G are incomparable -> front 1 = {3, 6}
#   F is dominated by B and D, not by G (G has 5 > 4)    -> front 2 = {5}
#   E is dominated by A, F, G, ...                       -> front 3 = {4}
EX1 = np.array([[1, 5], [2, 3], [4, 1], [3, 4], [5, 5], [4, 4], [5, 2]], dtype=float)
EX1_FRONTS = [[0, 1, 2], [3, 6], [5], [4]]

# Example 2 (one front, for crowding): P0=(0,10) P1=(1,6) P2=(3,5) P3=(6,2) P4=(10,0).
#   Ranges: x 10, y 10. Sorted by x the order is 0..4 (and reversed by y).
#   P1: x (3-0)/10 = 0.3, y (10-5)/10 = 0.5 -> 0.8
#   P2: x (6-1)/10 = 0.5, y (6-2)/10  = 0.4 -> 0.9
#   P3: x (10-3)/10 = 0.7, y (5-0)/10 = 0.5 -> 1.2
#   P0, P4 boundaries -> inf
EX2 = np.array([[0, 10], [1, 6], [3, 5], [6, 2], [10, 0]], dtype=float)
EX2_CROWDING = np.array([np.inf, 0.8, 0.9, 1.2, np.inf])


def as_lists(fronts: list[np.ndarray]) -> list[list[int]]:
    return [sorted(f.tolist()) for f in fronts]


def test_fronts_of_hand_worked_example() -> None:
    assert as_lists(nondominated_sort(EX1)) == EX1_FRONTS
    assert as_lists(nondominated_sort(EX1, np.zeros(7))) == EX1_FRONTS


def test_crowding_of_hand_worked_example() -> None:
    np.testing.assert_allclose(crowding_distance(EX2), EX2_CROWDING)


def test_crowding_is_invariant_to_row_order() -> None:
    perm = np.array([3, 0, 4, 2, 1])
    np.testing.assert_allclose(crowding_distance(EX2[perm]), EX2_CROWDING[perm])


def test_crowding_small_and_degenerate_fronts() -> None:
    assert crowding_distance(np.empty((0, 2))).shape == (0,)
    assert np.all(np.isinf(crowding_distance([[1.0, 2.0]])))
    assert np.all(np.isinf(crowding_distance([[1.0, 2.0], [2.0, 1.0]])))
    assert np.all(np.isinf(crowding_distance([[1.0, 2.0], [1.0, 2.0]])))  # size 2: inf even if identical
    # Three identical points: every range is zero -> no objective separates them -> all 0.
    np.testing.assert_array_equal(crowding_distance(np.ones((3, 2))), np.zeros(3))
    # y constant (range 0) contributes nothing; x = 0, 1, 4: middle gets (4-0)/4 = 1.
    np.testing.assert_allclose(crowding_distance([[0, 7], [1, 7], [4, 7]]), [np.inf, 1.0, np.inf])


def test_constrained_dominates_feasible_beats_infeasible() -> None:
    # a has far worse objectives but is feasible; b is infeasible.
    assert constrained_dominates([10, 10], 0.0, [0, 0], 0.1)
    assert not constrained_dominates([0, 0], 0.1, [10, 10], 0.0)


def test_constrained_dominates_two_infeasible_by_violation() -> None:
    # b violates less -> b wins regardless of objectives.
    assert constrained_dominates([9, 9], 0.2, [0, 0], 0.5)
    assert not constrained_dominates([0, 0], 0.5, [9, 9], 0.2)


def test_constrained_dominates_two_feasible_is_pareto() -> None:
    assert constrained_dominates([1, 2], 0.0, [1, 3], 0.0)
    assert not constrained_dominates([1, 3], 0.0, [1, 2], 0.0)
    assert not constrained_dominates([1, 3], 0.0, [2, 1], 0.0)  # incomparable
    assert not constrained_dominates([1, 3], 0.0, [1, 3], 0.0)  # equal: neither


def test_constrained_dominates_equal_violation_falls_back_to_pareto() -> None:
    assert constrained_dominates([0, 0], 0.5, [1, 1], 0.5)
    assert not constrained_dominates([1, 1], 0.5, [0, 0], 0.5)


def test_mixed_feasible_and_infeasible_fronts() -> None:
    # idx: 0=(0,0) v1.0  1=(5,5) v0  2=(1,1) v0.5  3=(6,1) v0  4=(9,9) v0  5=(0,0) v0.5
    # Feasible {1,3,4}: (5,5) and (6,1) incomparable, (9,9) dominated by (5,5) -> [1,3], [4]
    # Violation 0.5 {2,5}: equal violation -> Pareto: (0,0) dominates (1,1)   -> [5], [2]
    # Violation 1.0 {0}                                                        -> [0]
    F = np.array([[0, 0], [5, 5], [1, 1], [6, 1], [9, 9], [0, 0]], dtype=float)
    V = np.array([1.0, 0, 0.5, 0, 0, 0.5])
    assert as_lists(nondominated_sort(F, V)) == [[1, 3], [4], [5], [2], [0]]


def test_nan_objectives_rank_after_every_valid_candidate() -> None:
    # idx 0 has NaN error but would be best otherwise; idx 1 is valid but infeasible.
    # Among the NaN rows {0, 2, 3}, NaN reads as +inf: (inf,0) dominates (inf,1) dominates (inf,2).
    F = np.array([[np.nan, 0.0], [5.0, 5.0], [np.nan, 2.0], [np.nan, 1.0], [1.0, 1.0]])
    V = np.array([0.0, 3.0, 0.0, 0.0, 0.0])
    assert as_lists(nondominated_sort(F, V)) == [[4], [1], [0], [3], [2]]
    assert not constrained_dominates([np.nan, 0.0], 0.0, [5.0, 5.0], 3.0)
    assert constrained_dominates([5.0, 5.0], 3.0, [np.nan, 0.0], 0.0)


def test_survive_keeps_whole_fronts_then_cuts_by_crowding() -> None:
    # Q=(-1,-1) dominates all of Example 2 -> fronts [Q], [P0..P4].
    # k=4: Q, then P0 and P4 (inf), then P3 (1.2 > 0.9 > 0.8).
    F = np.vstack([EX2, [[-1.0, -1.0]]])
    q = 5
    assert survive(F, None, 4).tolist() == [q, 0, 4, 3]
    assert survive(F, None, 5).tolist() == [q, 0, 4, 3, 2]
    assert survive(F, None, 6).tolist() == [q, 0, 1, 2, 3, 4]
    assert survive(F, None, 1).tolist() == [q]
    assert survive(F, None, 0).tolist() == []
    assert survive(F, None, 50).tolist() == [q, 0, 1, 2, 3, 4]


def test_survive_fills_by_fronts_in_hand_worked_example() -> None:
    # Fronts [0,1,2], [3,6], [5], [4]; k=5 takes the first two whole fronts.
    assert sorted(survive(EX1, np.zeros(7), 5).tolist()) == [0, 1, 2, 3, 6]
    # k=4 cuts front [3,6]: both are boundary (inf) -> tie -> lower index 3.
    assert survive(EX1, None, 4).tolist() == [0, 1, 2, 3]


def test_survive_prefers_feasible_and_breaks_ties_by_index() -> None:
    F = np.ones((4, 2))
    assert survive(F, None, 2).tolist() == [0, 1]
    V = np.array([0.3, 0.0, 0.1, 0.0])
    assert survive(np.zeros((4, 2)), V, 3).tolist() == [1, 3, 2]


def test_rank_and_crowding_match_fronts() -> None:
    rank, crowd = rank_and_crowding(EX1)
    assert rank.tolist() == [0, 0, 0, 1, 3, 2, 1]
    # Front 0: A, C boundaries; B: x (4-1)/3 = 1, y (5-1)/4 = 1 -> 2.
    assert crowd[1] == pytest.approx(2.0)
    assert np.isinf(crowd[[0, 2, 3, 4, 5, 6]]).all()


def brute_force_fronts(F: np.ndarray, V: np.ndarray) -> list[list[int]]:
    """Peel fronts with the scalar rule only: a front is the remaining points nobody remaining dominates."""
    remaining = list(range(len(F)))
    fronts = []
    while remaining:
        front = [
            j for j in remaining if not any(constrained_dominates(F[i], V[i], F[j], V[j]) for i in remaining if i != j)
        ]
        fronts.append(front)
        remaining = [j for j in remaining if j not in front]
    return fronts


def scalar_dominates(fa, va, fb, vb) -> bool:
    """Deb's rule written independently with Python scalars (no NaN), for the cross-check."""
    if va != vb:
        return va < vb
    return all(x <= y for x, y in zip(fa, fb)) and any(x < y for x, y in zip(fa, fb))


small_problems = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.lists(st.integers(0, 4), min_size=2, max_size=2), min_size=n, max_size=n),
        st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0]), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(small_problems)
def test_sort_matches_brute_force(problem) -> None:
    F = np.array(problem[0], dtype=float)
    V = np.array(problem[1])
    n = len(F)
    for i in range(n):
        for j in range(n):
            assert constrained_dominates(F[i], V[i], F[j], V[j]) == scalar_dominates(F[i], V[i], F[j], V[j])
    assert as_lists(nondominated_sort(F, V)) == brute_force_fronts(F, V)


@settings(max_examples=60, deadline=None)
@given(small_problems, st.integers(0, 14))
def test_survivors_never_rank_below_a_rejected_candidate(problem, k) -> None:
    F = np.array(problem[0], dtype=float)
    V = np.array(problem[1])
    kept = survive(F, V, k)
    assert len(kept) == min(k, len(F))
    assert len(set(kept.tolist())) == len(kept)
    rank, _ = rank_and_crowding(F, V)
    rejected = np.setdiff1d(np.arange(len(F)), kept)
    if len(kept) and len(rejected):
        assert rank[kept].max() <= rank[rejected].min()


def test_tournament_is_deterministic_for_a_seed() -> None:
    rank, crowd = rank_and_crowding(EX1)
    a = binary_tournament(rank, crowd, 50, np.random.default_rng(7))
    b = binary_tournament(rank, crowd, 50, np.random.default_rng(7))
    c = binary_tournament(rank, crowd, 50, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype.kind == "i" and a.min() >= 0 and a.max() < len(EX1)


def test_tournament_prefers_lower_rank() -> None:
    # 5 candidates of rank 0, 5 of rank 1, equal crowding. A pair of distinct candidates holds at least
    # one rank-0 with probability 1 - (5/10)(4/9) = 7/9, and then rank 0 must win.
    rank = np.array([0] * 5 + [1] * 5)
    crowd = np.zeros(10)
    picks = binary_tournament(rank, crowd, 20000, np.random.default_rng(0))
    share = np.mean(rank[picks] == 0)
    assert share == pytest.approx(7 / 9, abs=0.015)


def test_tournament_two_candidates_rank_then_crowding_then_coin() -> None:
    rng = np.random.default_rng(1)
    assert set(binary_tournament([1, 0], [np.inf, 0.0], 200, rng).tolist()) == {1}
    assert set(binary_tournament([0, 0], [0.1, 0.5], 200, rng).tolist()) == {1}
    coin = binary_tournament([0, 0], [0.5, 0.5], 4000, rng)
    assert np.mean(coin == 0) == pytest.approx(0.5, abs=0.03)


def test_tournament_edge_cases() -> None:
    rng = np.random.default_rng(0)
    assert binary_tournament([0], [np.inf], 3, rng).tolist() == [0, 0, 0]
    assert binary_tournament([0, 1], [0.0, 0.0], 0, rng).shape == (0,)
    with pytest.raises(ValueError):
        binary_tournament([], [], 1, rng)
    with pytest.raises(ValueError):
        survive(EX1, None, -1)
