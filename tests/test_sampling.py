"""The discretised normal device noise is drawn from: its table holds N(0, 1)'s bin means (the samples themselves are
tested with their counter-based stream in test_mzi_kernels.py)."""

from __future__ import annotations

import math

import pytest
import torch

from uhnas.hardware.sampling import LEVELS, MAX_ABS, quantile_table


def test_table_holds_the_bin_means_of_the_standard_normal() -> None:
    table = quantile_table().double()
    assert table.shape == (LEVELS,)
    assert bool((table[1:] > table[:-1]).all())
    assert torch.equal(table, -table.flip(0))  # antisymmetric: mean exactly 0
    assert float(table.square().mean()) == pytest.approx(1.0, abs=1e-6)
    assert float(table.abs().max()) == pytest.approx(MAX_ABS) and 4.3 < MAX_ABS < 4.5
    # every value lies inside its equiprobable bin [Phi^-1(i / 2^16), Phi^-1((i + 1) / 2^16)]
    p = torch.arange(LEVELS + 1, dtype=torch.float64) / LEVELS
    edges = torch.special.ndtri(p)
    assert bool((table >= edges[:-1] - 1e-6).all()) and bool((table <= edges[1:] + 1e-6).all())
    # the 1st bin above 0 by hand: mean of Z on [0, Phi^-1(1/2 + 2^-16)] = 2^16 (phi(0) - phi(b)) ~ b / 2
    b = float(edges[LEVELS // 2 + 1])
    assert float(table[LEVELS // 2]) == pytest.approx(
        LEVELS * (1 - math.exp(-b * b / 2)) / math.sqrt(2 * math.pi), rel=1e-5
    )
