"""The discretised-normal stream used for detector noise: its table is N(0, 1)'s bin means, its samples are normal."""

from __future__ import annotations

import math

import pytest
import torch

from uhnas.hardware.sampling import LEVELS, MAX_ABS, NormalStream, quantile_table


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
    assert float(table[LEVELS // 2]) == pytest.approx(LEVELS * (1 - math.exp(-b * b / 2)) / math.sqrt(2 * math.pi), rel=1e-5)


def test_stream_is_seeded_continues_and_is_distributed_as_a_normal() -> None:
    size = 1 << 20
    first = NormalStream(5).fill_(torch.empty(size))
    assert torch.equal(first, NormalStream(5).fill_(torch.empty(size)))
    assert not torch.equal(first, NormalStream(6).fill_(torch.empty(size)))
    stream = NormalStream(5)
    a, b = stream.fill_(torch.empty(1000)), stream.fill_(torch.empty(1000))
    assert torch.equal(a, first[:1000]) and torch.equal(b, first[1000:2000])  # continues where it stopped
    x = first.double()
    se = 1 / math.sqrt(size)
    assert abs(float(x.mean())) < 5 * se
    assert float(x.var()) == pytest.approx(1.0, abs=5 * math.sqrt(2) * se)
    assert float((x**4).mean()) == pytest.approx(3.0, abs=0.05)  # kurtosis of a normal
    # Kolmogorov-Smirnov distance to Phi (DKW: P(D > 0.003) < 2 exp(-2 N 0.003^2) ~ 1e-8 for a true normal)
    ordered = x.sort().values
    cdf = torch.special.ndtr(ordered)
    ecdf = torch.arange(1, size + 1, dtype=torch.float64) / size
    assert float(torch.maximum((ecdf - cdf).abs(), (ecdf - 1 / size - cdf).abs()).max()) < 0.003
    assert float(x.abs().max()) <= MAX_ABS + 1e-6


def test_stream_rejects_buffers_it_cannot_fill() -> None:
    stream = NormalStream(0)
    with pytest.raises(ValueError, match="float32"):
        stream.fill_(torch.empty(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        stream.fill_(torch.empty(4, 4).t())
