"""The discretised standard normal every device-noise sample is drawn from: one of 2^16 equiprobable bins.

A Monte-Carlo evaluation needs one normal sample per detected partial sum (tens of millions per candidate), and
torch's CPU ``normal_`` draws every sample through a scalar Mersenne Twister (4-7 ns per float32 sample on the
development machine). 16 random bits instead pick one of 2^16 equiprobable bins of N(0, 1), each represented by
its conditional mean E[Z | a < Z < b] = 2^16 (phi(a) - phi(b)) (closed form), the table rescaled to unit variance:

* mean exactly 0 (the table is antisymmetric) and variance exactly 1 (rescaled in float64);
* its CDF is within 2^-16 of the normal's everywhere (each bin holds probability 2^-16);
* |z| <= :data:`MAX_ABS` = 4.39: the outermost bins, |z| > 3.98 (probability 2^-16 on each side), are represented
  by their means.

Finer than any device-noise model needs (the noise it feeds is itself an approximation to a physical process).
The random bits come from the counter-based stream of :mod:`uhnas.hardware.counter_rng`, which compiled kernels
draw in place (~0.5 ns per sample, ``bench/robustness.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["MAX_ABS", "quantile_table"]

BITS = 16
LEVELS = 1 << BITS


@lru_cache(maxsize=1)
def _table64() -> Tensor:
    """The 2^16 bin means of N(0, 1), ascending, antisymmetric, unit variance (float64)."""
    half = LEVELS // 2
    # upper half: bins [Phi^-1(1/2 + i/2^16), Phi^-1(1/2 + (i+1)/2^16)), i = 0 .. 2^15 - 1 (the last one unbounded)
    p = 0.5 + torch.arange(half + 1, dtype=torch.float64) / LEVELS
    edges = torch.special.ndtri(p)  # edges[0] = 0, edges[-1] = inf
    density = torch.exp(-0.5 * edges**2) / math.sqrt(2.0 * math.pi)  # phi(inf) = 0
    upper = LEVELS * (density[:-1] - density[1:])
    table = torch.cat([-upper.flip(0), upper])
    return table / table.square().mean().sqrt()


def quantile_table(dtype: torch.dtype = torch.float32) -> Tensor:
    """The lookup table samples are drawn from (2^16 values, ascending): float32 (the samples) or float64."""
    return _table32() if dtype == torch.float32 else _table64()


@lru_cache(maxsize=1)
def _table32() -> Tensor:
    return _table64().to(torch.float32)


MAX_ABS = float(_table64()[-1])
"""Largest magnitude a sample can take (the outermost bin's conditional mean, in units of sigma)."""
