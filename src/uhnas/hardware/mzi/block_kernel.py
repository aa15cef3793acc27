"""Compiled (Numba) CPU product of a layer's realised SVD blocks, written in the Monte-Carlo forward's layout.

Block (r, c) of draw d is B = Re(U diag(a) V): U and V the draw's realised meshes, a its attenuator fields (see
`uhnas.hardware.mzi.backend`).  The forward kernel (`forward_kernel`) reads it as ``weights[c, d, r K + i, k]``
times a constant per block (DAC levels, ADC step, nominal loss).  Here each block is one pass: V split once into
real and imaginary planes, then a row of U diag(a) at a time against them, only the real part (half the work of a
complex matmul followed by ``.real``), scaled and stored straight into that layout (no permuted copy), rows past
the layer's outputs skipped.  torch's form of the same product is `MZIBackend._noisy_blocks`; the tests check that
both agree.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["real_blocks"]


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)
def real_blocks(  # pragma: no cover - compiled; checked against the torch product in tests/test_mzi_backend.py
    mats: np.ndarray,  # (2T, D, K, K) complex: the realised U of every block (row-major (r, c)), then every V
    field: np.ndarray,  # (D, T, K) complex attenuator fields
    scale: np.ndarray,  # (R, C) real constant per block
    col_tiles: int,  # C
    out: np.ndarray,  # (C, D, rows, K) real: out[c, d, r K + i, k] = scale[r, c] Re(U diag(a) V)[i, k]
) -> None:
    two_t, draws, k = mats.shape[0], mats.shape[1], mats.shape[2]
    tiles, rows = two_t // 2, out.shape[2]
    dtype = out.dtype
    vr = np.empty((k, k), dtype=dtype)
    vi = np.empty((k, k), dtype=dtype)
    acc = np.empty(k, dtype=dtype)
    for t in range(tiles):
        r, c = t // col_tiles, t % col_tiles
        s = dtype.type(scale[r, c])
        live = min(k, rows - r * k)  # block rows that are layer outputs
        if live <= 0:
            continue
        for d in range(draws):
            v = mats[tiles + t, d]
            for j in range(k):
                for kk in range(k):
                    x = v[j, kk]
                    vr[j, kk], vi[j, kk] = x.real, x.imag
            u, a = mats[t, d], field[d, t]
            for i in range(live):
                for kk in range(k):
                    acc[kk] = 0
                for j in range(k):
                    x = u[i, j] * a[j]
                    xr, xi = dtype.type(x.real) * s, dtype.type(x.imag) * s
                    for kk in range(k):
                        acc[kk] += xr * vr[j, kk] - xi * vi[j, kk]
                o = out[c, d, r * k + i]
                for kk in range(k):
                    o[kk] = acc[kk]
