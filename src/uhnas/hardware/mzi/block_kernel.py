"""Compiled (Numba) CPU product of a layer's realised SVD blocks, written in the Monte-Carlo forward's layout.

Block (r, c) of draw d is B = Re(U diag(a) V): U and V the draw's realised meshes, a its attenuator fields (see
`uhnas.hardware.mzi.backend`).  The forward kernel (`forward_kernel`) reads it as ``weights[c, d, r K + i, k]``
times a constant per block (DAC levels, ADC step, nominal loss).  Here each block is one pass: V split once into
real and imaginary planes, then a row of U diag(a) at a time against them, only the real part (half the work of a
complex matmul followed by ``.real``), scaled and stored straight into that layout (no permuted copy), rows past
the layer's outputs skipped.  torch's form of the same product is `MZIBackend._noisy_blocks`; the tests check that
both agree.

The attenuator fields a come from `attenuator_fields`: the model of `noise.attenuator_field` in one pass over the
(draw, block, attenuator) elements, every random quantity a table lookup at its sample's index (a rotation by the
phase noise, as in `mesh_kernel`; the coupling ratios and the loss spread's amplitude tabulated over the normal's
2^16 values) instead of some twenty torch passes with a sine, a cosine and a power each.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from uhnas.hardware.mzi.mesh_kernel import (
    LANES,
    _fold_plan,
    _lane_apply,
    _lane_mesh,
    _lane_state,
    _lane_transfers,
    _rotation,
)

__all__ = ["attenuator_fields", "build_blocks", "real_blocks"]


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


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)
def attenuator_fields(  # pragma: no cover - compiled; checked against noise.attenuator_field in the tests
    half_cos: np.ndarray,  # (T K,) cos of half the programmed (quantised, crosstalk-shifted) attenuator phase
    half_sin: np.ndarray,  # (T K,) its sine
    coupler: np.ndarray,  # (D T K 2,) uint16 table indices of the coupler-ratio normals (empty: ideal 50:50)
    ratios: np.ndarray,  # (2^16,) the coupling ratio per index (`mesh.sampled_coupler_ratios`)
    loss: np.ndarray,  # (D T K,) uint16 table indices of the loss normals (empty: no loss spread)
    loss_amp: np.ndarray,  # (2^16,) field amplitude 10^(-(max(0, IL_0 + sigma_IL t) - IL_0) / 20) per table value t
    phase: np.ndarray,  # (D T K,) uint16 table indices of the phase normals (empty: no phase noise)
    rot: np.ndarray,  # (2^15, 2) cos, sin of sigma_phi t / 2 (`mesh_kernel.noise_rotations`)
    out: np.ndarray,  # (D, T K, 2) re, im: (cc + ss) sin(theta / 2) - i (cc - ss) cos(theta / 2), times the amplitude
) -> None:
    """The model of `noise.attenuator_field` for samples drawn as `noise.sample_attenuators` and it draw them: per
    draw, the table lookups (scalar), then the field arithmetic in one vectorised pass."""
    draws, count = out.shape[0], out.shape[1]
    real = half_cos.dtype.type
    one = real(1)
    cu, su = np.ones(count, dtype=half_cos.dtype), np.zeros(count, dtype=half_cos.dtype)
    r1 = np.full(count, real(0.5), dtype=half_cos.dtype)  # without coupler errors: 50:50 (mesh.NOMINAL_SPLIT)
    r2 = r1.copy()
    amp = np.ones(count, dtype=half_cos.dtype)
    for d in range(draws):
        base = d * count
        if phase.shape[0]:  # e^{i (h + sigma z / 2)} = e^{i h} e^{i sigma z / 2}
            for e in range(count):
                cu[e], su[e] = _rotation(rot, np.int64(phase[base + e]))
        if coupler.shape[0]:
            for e in range(count):
                r1[e], r2[e] = ratios[coupler[2 * (base + e)]], ratios[coupler[2 * (base + e) + 1]]
        if loss.shape[0]:
            for e in range(count):
                amp[e] = loss_amp[loss[base + e]]
        o = out[d]
        for e in range(count):
            ch, sh = half_cos[e] * cu[e] - half_sin[e] * su[e], half_sin[e] * cu[e] + half_cos[e] * su[e]
            cc, ss = np.sqrt(one - r1[e]) * np.sqrt(one - r2[e]), np.sqrt(r1[e]) * np.sqrt(r2[e])
            o[e, 0], o[e, 1] = (cc + ss) * sh * amp[e], -(cc - ss) * ch * amp[e]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def build_blocks(  # pragma: no cover - compiled; checked against the torch blocks in tests/test_mzi_backend.py
    column_start,
    top,
    dummy_start,
    dummy_mode,
    theta_cs,
    phi_cs,
    output_cs,
    seeds,
    noisy,
    rot,
    ratio,
    amp,
    dummy_amp,
    chip_meshes: int,
    chip_draws: int,  # the inputs `mesh_kernel.build_meshes` takes for the 2T meshes, U then V
    field: np.ndarray,  # (D, T, K) complex attenuator fields
    scale: np.ndarray,  # (R, C) real constant per block
    col_tiles: int,
    out: np.ndarray,  # (C, D, rows, K) real, as `real_blocks`
) -> None:
    """`real_blocks` of the meshes `mesh_kernel.build_meshes` would build, without building U: LANES (block, draw)
    pairs at a time, V is built in the lanes (`mesh_kernel`'s small-mesh layout), its rows are multiplied by the
    attenuator fields, and U's gates are applied to the result (U diag(a) V, all columns); the real part is scaled
    and stored.  No matrix is stored and transposed back, and no product is computed apart."""
    two_t, n = theta_cs.shape[0], output_cs.shape[2]
    tiles, draws, rows = two_t // 2, out.shape[1], out.shape[2]
    k_total, n_dummy = top.shape[0], dummy_mode.shape[0]
    words = (2 * k_total + n + 3) // 4  # 64-bit noise words per draw
    dtype = theta_cs.dtype
    plan = _fold_plan(column_start, top, dummy_start, dummy_mode, n)
    state_v = _lane_state(k_total, n, n_dummy, words, dtype)
    state_u = _lane_state(k_total, n, n_dummy, words, dtype)
    stride = (2 * n + 1) * LANES
    w = np.zeros(n * stride, dtype=dtype)
    fa = np.zeros(2 * n * LANES, dtype=dtype)
    tile, draw = np.zeros(LANES, dtype=np.int64), np.zeros(LANES, dtype=np.int64)
    mesh_u, mesh_v = np.zeros(LANES, dtype=np.int64), np.zeros(LANES, dtype=np.int64)
    chip_u, chip_v = np.zeros(LANES, dtype=np.int64), np.zeros(LANES, dtype=np.int64)
    seed_u, seed_v = np.zeros(LANES, dtype=np.uint64), np.zeros(LANES, dtype=np.uint64)
    word = np.zeros(LANES, dtype=np.uint64)
    total = tiles * draws
    for first in range(0, total, LANES):
        for lane in range(LANES):  # lanes past the end repeat the last pair (computed, not stored)
            f = min(first + lane, total - 1)
            t, d = f // draws, f % draws
            tile[lane], draw[lane], word[lane] = t, d, np.uint64(d * words)
            mesh_u[lane], mesh_v[lane] = t, tiles + t
            seed_u[lane], seed_v[lane] = seeds[t], seeds[tiles + t]
            chip_u[lane] = (t if chip_meshes > 1 else 0) * chip_draws + (d if chip_draws > 1 else 0)
            chip_v[lane] = ((tiles + t) if chip_meshes > 1 else 0) * chip_draws + (d if chip_draws > 1 else 0)
        gates = _lane_transfers(
            state_v, mesh_v, chip_v, seed_v, word, plan, theta_cs, phi_cs, output_cs, noisy, rot, ratio, amp, dummy_amp
        )
        _lane_mesh(column_start, top, gates, n, w)
        for i in range(n):  # the lanes' fields, in w's (re, im) x lane order
            for lane in range(LANES):
                a = field[draw[lane], tile[lane], i]
                fa[2 * i * LANES + lane], fa[(2 * i + 1) * LANES + lane] = a.real, a.imag
        for j in range(n):  # row i of V times a_i: element (i, j) sits at j * stride + 2 i LANES
            for i in range(n):
                o, e = max(0, j * stride + 2 * i * LANES), max(0, 2 * i * LANES)
                for lane in range(LANES):
                    ar, ai, xr, xi = fa[e + lane], fa[e + LANES + lane], w[o + lane], w[o + LANES + lane]
                    w[o + lane], w[o + LANES + lane] = ar * xr - ai * xi, ar * xi + ai * xr
        gates = _lane_transfers(
            state_u, mesh_u, chip_u, seed_u, word, plan, theta_cs, phi_cs, output_cs, noisy, rot, ratio, amp, dummy_amp
        )
        _lane_apply(column_start, top, gates, n, w, False)
        for lane in range(min(LANES, total - first)):
            t, d = tile[lane], draw[lane]
            r, c = t // col_tiles, t % col_tiles
            s = dtype.type(scale[r, c])
            for i in range(min(n, rows - r * n)):
                o = out[c, d, r * n + i]
                for j in range(n):
                    o[j] = s * w[j * stride + 2 * i * LANES + lane]
