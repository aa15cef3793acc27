"""Counter-based discretised normals for compiled (Numba) kernels: sample ``j`` of stream ``seed`` is a pure function.

Sample ``j`` is the 16-bit lane ``j % 4`` of ``splitmix64(seed + (j // 4 + 1) * GOLDEN)`` (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014: the SplitMix64 output function on a Weyl sequence),
used as an index into the 2^16 equiprobable-bin table of N(0, 1) of :mod:`uhnas.hardware.sampling` (mean exactly 0,
variance exactly 1, CDF within 2^-16 of the normal's, |z| <= 4.39).  Being a function of (seed, j), a kernel draws
the samples it needs where it needs them, in any order, with no state to carry and no buffer to fill first; the
same samples come out of :func:`counter_normals` for code that is not compiled (the CUDA path of the mesh
builder), so both paths compute the same Monte-Carlo draws.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from uhnas.hardware.sampling import quantile_table

__all__ = ["counter_normals", "fill_indices", "fill_normals", "mix", "seed_of"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
LANE_MASK = np.uint64(0xFFFF)


@njit(cache=True, inline="always")
def mix(seed: np.uint64, word: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    """64 random bits: word ``word`` (0, 1, ...) of stream ``seed``."""
    z = seed + (word + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def fill_indices(seed: np.uint64, start: np.int64, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i] = table index of sample ``start + i`` of stream ``seed`` (uint16 ``out``); ``start`` a multiple of 4."""
    word = np.uint64(start // 4)
    count = out.shape[0]
    i = 0
    while i < count:
        bits = mix(seed, word)
        for lane in range(4):
            if i + lane < count:
                out[i + lane] = np.uint16((bits >> np.uint64(16 * lane)) & LANE_MASK)
        word += np.uint64(1)
        i += 4


@njit(cache=True, nogil=True)
def fill_normals(seed: np.uint64, start: np.int64, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """out[i] = sample ``start + i`` of stream ``seed`` (``start`` a multiple of 4): ``table`` at its index."""
    word = np.uint64(start // 4)
    count = out.shape[0]
    for q in range(count // 4):
        bits = mix(seed, word + np.uint64(q))
        for lane in range(4):
            out[4 * q + lane] = table[(bits >> np.uint64(16 * lane)) & LANE_MASK]
    if count % 4:
        bits = mix(seed, word + np.uint64(count // 4))
        for lane in range(count % 4):
            out[count - count % 4 + lane] = table[(bits >> np.uint64(16 * lane)) & LANE_MASK]


def seed_of(generator: torch.Generator | None, count: int) -> np.ndarray:
    """``count`` stream seeds from ``generator`` (one 62-bit draw each, the same as ``count`` single draws)."""
    return torch.randint(0, 1 << 62, (count,), generator=generator).numpy().astype(np.uint64)


def counter_normals(seed: int | np.uint64, count: int, dtype: torch.dtype = torch.float32, start: int = 0) -> Tensor:
    """Samples ``start .. start + count - 1`` of stream ``seed`` as a CPU tensor (``start`` a multiple of 4)."""
    if start % 4:
        raise ValueError(f"start must be a multiple of 4, got {start}")
    table = quantile_table(dtype if dtype in (torch.float32, torch.float64) else torch.float64)
    out = torch.empty(count, dtype=table.dtype)
    fill_normals(np.uint64(seed), np.int64(start), table.numpy(), out.numpy())
    return out.to(dtype)
