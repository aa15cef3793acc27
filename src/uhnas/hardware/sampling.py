"""Fast standard-normal samples for device noise on a CPU: inverse-CDF lookup from 16 random bits.

torch's CPU ``normal_`` draws every sample through a scalar Mersenne Twister (4-7 ns per float32 sample on the
development machine), and a Monte-Carlo evaluation needs one sample per detected partial sum: tens of millions per
candidate. :class:`NormalStream` instead takes 16 bits per sample from numpy's SFC64 generator and looks up one of
2^16 equiprobable bins of N(0, 1), each represented by its conditional mean E[Z | a < Z < b] = 2^16 (phi(a) - phi(b))
(closed form), the table rescaled to unit variance. The result is a discretised normal:

* mean exactly 0 (the table is antisymmetric) and variance exactly 1 (rescaled in float64);
* its CDF is within 2^-16 of the normal's everywhere (each bin holds probability 2^-16);
* |z| <= :data:`MAX_ABS` = 4.39: the outermost bins, |z| > 3.98 (probability 2^-16 on each side), are represented
  by their means.

Finer than any device-noise model needs (the noise it feeds is itself an approximation to a physical process) and
about 2-3x faster than ``normal_`` (``bench/robustness.py``). A stream is deterministic for its seed.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_ABS", "NormalStream", "quantile_table"]

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
    """The lookup table :class:`NormalStream` samples from (2^16 values, ascending): float32 (the samples) or float64."""
    return _table32() if dtype == torch.float32 else _table64()


@lru_cache(maxsize=1)
def _table32() -> Tensor:
    return _table64().to(torch.float32)


MAX_ABS = float(_table64()[-1])
"""Largest magnitude a sample can take (the outermost bin's conditional mean, in units of sigma)."""


class NormalStream:
    """A deterministic stream of discretised standard normals (see the module docstring), filled into CPU tensors."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.SFC64(int(seed) % (1 << 63))
        self._index = np.empty(0, dtype=np.int32)

    def fill_(self, out: Tensor) -> Tensor:
        """Overwrite the contiguous float32 CPU tensor ``out`` with the next ``out.numel()`` samples; returns it."""
        if out.device.type != "cpu" or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"NormalStream fills contiguous float32 CPU tensors, got {out.dtype} on {out.device}")
        count = out.numel()
        raw = self._bits.random_raw(-(-count // 4)).view(np.uint16)[:count]  # 4 samples per 64 random bits
        if self._index.shape[0] < count:
            self._index = np.empty(count, dtype=np.int32)
        index = self._index[:count]
        np.copyto(index, raw, casting="unsafe")
        torch.index_select(_table32(), 0, torch.from_numpy(index), out=out.view(-1))
        return out
