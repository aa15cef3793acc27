"""Study statistics against hand-computed values: Mann-Whitney U, Wilcoxon signed-rank, Holm, A12, summaries."""

from __future__ import annotations

import math

import pytest

from uhnas.study import stats


def test_mann_whitney_matches_the_exact_distribution_by_hand():
    # x = {1, 2, 4}, y = {3, 5, 6}: only 4 > 3, so U_x = 1. Of the C(6, 3) = 20 equally likely rankings,
    # two give U <= 1 (U = 0 and U = 1 once each), so the exact two-sided p is 2 * 2/20 = 0.2.
    u, p = stats.mann_whitney([1, 2, 4], [3, 5, 6])
    assert u == 1.0
    assert p == pytest.approx(0.2)
    # complete separation: U = 0, p = 2 * 1/20
    assert stats.mann_whitney([1, 2, 3], [4, 5, 6]) == (0.0, pytest.approx(0.1))
    assert stats.mann_whitney([2, 2], [2, 2]) == (2.0, 1.0)  # identical samples: no evidence at all


def test_a12_by_hand():
    assert stats.a12([1, 2, 4], [3, 5, 6]) == pytest.approx(1 / 9)  # one of nine pairs has x > y
    assert stats.a12([4, 5, 6], [1, 2, 3]) == 1.0
    assert stats.a12([1, 2], [2, 3]) == pytest.approx((0 + 0.5) / 4)  # one tie counts half
    assert stats.a12([1, 2, 3], [1, 2, 3]) == 0.5
    assert stats.a12_magnitude(0.5) == "negligible"
    assert stats.a12_magnitude(1 / 9) == "large" and stats.a12_magnitude(0.6) == "small"
    assert stats.a12_magnitude(0.33) == "medium"


def test_wilcoxon_signed_rank_by_hand():
    # differences 1, 2, 3 all positive: W- = 0; of the 2^3 sign patterns one gives W- = 0 -> p = 2/8
    w, p = stats.wilcoxon_signed_rank([2, 4, 6], [1, 2, 3])
    assert w == 0.0 and p == pytest.approx(0.25)
    assert stats.wilcoxon_signed_rank([1, 2], [1, 2]) == (0.0, 1.0)


def test_holm_by_hand():
    # sorted p: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> monotone: 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = stats.holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])  # NaN is not counted
    assert stats.holm([]) == []


def test_compare_pairs_seeds_when_they_match():
    paired = stats.compare([2, 4, 6], [1, 2, 3], [0, 1, 2], [2, 1, 0])
    assert paired["test"] == "wilcoxon"
    # seed 0: 2 vs 3, seed 1: 4 vs 2, seed 2: 6 vs 1 -> differences -1, 2, 5: W- = 1, p = 2 * 2/8
    assert paired["statistic"] == 1.0 and paired["p"] == pytest.approx(0.5)
    unpaired = stats.compare([1, 2, 4], [3, 5, 6], [0, 1, 2], [3, 4, 5])
    assert unpaired["test"] == "mann-whitney" and unpaired["p"] == pytest.approx(0.2)
    assert unpaired["a12"] == pytest.approx(1 / 9) and unpaired["magnitude"] == "large"
    assert stats.compare([1, 2, 4], [3, 5, 6], [0, 1, 2], [0, 1, 2], paired=False)["test"] == "mann-whitney"


def test_describe_by_hand():
    d = stats.describe([4.0, 1.0, 3.0, 2.0])
    assert d["median"] == 2.5 and d["q25"] == 1.75 and d["q75"] == 3.25 and d["iqr"] == 1.5
    assert (d["min"], d["max"], d["n"], d["mean"]) == (1.0, 4.0, 4, 2.5)
    assert stats.describe([])["median"] is None
    assert stats.describe([1.0, None, math.nan])["n"] == 1


def test_rank_correlations():
    r = stats.spearman_kendall([1, 2, 3, 4], [10, 20, 30, 40])
    assert r["spearman"] == pytest.approx(1.0) and r["kendall"] == pytest.approx(1.0)
    r = stats.spearman_kendall([1, 2, 3, 4], [2, 1, 4, 3])
    # d = (1, -1, 1, -1): rho = 1 - 6 * 4 / (4 * 15) = 0.6; tau = (4 concordant - 2 discordant) / 6 = 1/3
    assert r["spearman"] == pytest.approx(0.6) and r["kendall"] == pytest.approx(1 / 3)
    assert stats.spearman_kendall([1, 1, 1], [1, 2, 3])["spearman"] is None  # constant: undefined


def test_a_killed_session_counts_until_the_next_one_started():
    from uhnas.study.report import session_durations

    sessions = [
        {"started": 1000.0, "ended": 1600.0, "slots": 2},  # finished normally: 600 s
        {"started": 0.0, "slots": 2},  # SIGKILLed, no end written: ran until the next session, 1000 s
        {"started": 2000.0, "slots": 1},  # the last session, killed: its end is unknown
    ]
    assert session_durations(sessions) == [(1000.0, 2), (600.0, 2), (0.0, 1)]
    # a report while the last session still runs: it counts until now
    assert session_durations(sessions, live_until=2500.0) == [(1000.0, 2), (600.0, 2), (500.0, 1)]
