"""Compiled (Numba) CPU builder of noisy Clements mesh matrices: one fused loop per mesh and draw.

The model is :func:`uhnas.hardware.mzi.mesh.mesh_matrices`' (see its module docstring for the MZI transfer and the
conventions); this is how it is computed on a CPU.  Per mesh and draw the matrix is accumulated column by column
in two cache-resident real planes (real, imaginary; n x n each, 32 KiB at n = 64 in float32): each MZI's 2x2
transfer is made from its programmed phases, its noise samples and its chip's coupler and loss values, then applied
to its two rows, only over the columns light can have reached (after c mesh columns, row i is non-zero only in
columns i - c .. i + c + 1: a quarter of the work of a full update at n = 64 is skipped).  The phase noise of
shifter j, draw d of mesh m is the counter-based discretised normal ``d * S4 + j`` of the mesh's stream
(:mod:`uhnas.hardware.counter_rng`, S4 = 2 K + n rounded up to a multiple of 4; theta of the K MZIs first, then
phi, then the output phases); e^{i sigma z} comes from a table of the 2^16 possible values, so no sine or cosine
is evaluated per draw: e^{i (p + sigma z)} = e^{i p} e^{i sigma z} with e^{i p} of the programmed phase p, computed
once per mesh.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from numba import njit

from uhnas.hardware.counter_rng import fill_indices
from uhnas.hardware.sampling import quantile_table

__all__ = ["build_meshes", "noise_rotations"]


@lru_cache(maxsize=8)
def noise_rotations(phase_std: float, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of phase_std x every discretised-normal table value (2^16 each, ``dtype``), from float64."""
    angle = phase_std * quantile_table(torch.float64).numpy()
    return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)


LANES = 16  # row updates run over whole blocks of this many columns (one AVX-512 register of float32)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _coupler_products(ratio: np.ndarray, amp: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[0..3, k] = amp c1 c2, amp r1 r2, amp r1 c2, amp c1 r2 of MZI k (r = sqrt(ratio), c = sqrt(1 - ratio))."""
    for k in range(ratio.shape[0]):
        k1, k2 = ratio[k, 0], ratio[k, 1]
        r1, c1, r2, c2 = np.sqrt(k1), np.sqrt(1 - k1), np.sqrt(k2), np.sqrt(1 - k2)
        out[0, k] = c1 * c2 * amp[k]
        out[1, k] = r1 * r2 * amp[k]
        out[2, k] = r1 * c2 * amp[k]
        out[3, k] = c1 * r2 * amp[k]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _gates(cs_theta: np.ndarray, cs_phi: np.ndarray, couplers: np.ndarray, index: np.ndarray, noisy: bool,
           rot_cos: np.ndarray, rot_sin: np.ndarray, gates: np.ndarray) -> None:  # pragma: no cover - compiled
    """gates[0..7, k]: re, im of T00, T01, T10, T11 of every MZI k of one draw (see `build_meshes`)."""
    k_total = cs_theta.shape[1]
    for k in range(k_total):
        ct, st, cp, sp = cs_theta[0, k], cs_theta[1, k], cs_phi[0, k], cs_phi[1, k]
        if noisy:  # e^{i (p + sigma z)} = e^{i p} e^{i sigma z}
            u, v = index[k], index[k_total + k]
            ct, st = ct * rot_cos[u] - st * rot_sin[u], st * rot_cos[u] + ct * rot_sin[u]
            cp, sp = cp * rot_cos[v] - sp * rot_sin[v], sp * rot_cos[v] + cp * rot_sin[v]
        cb, sb = ct * cp - st * sp, st * cp + ct * sp  # e^{i (theta + phi)}
        cc, rr, rc, cr = couplers[0, k], couplers[1, k], couplers[2, k], couplers[3, k]
        # T00 = cc e^{i(t+p)} - rr e^{ip}; T01 = i (rc e^{it} + cr); T10 = i (cr e^{i(t+p)} + rc e^{ip});
        # T11 = cc - rr e^{it}   (amplitude coupling products times the MZI's field amplitude)
        gates[0, k], gates[1, k] = cc * cb - rr * cp, cc * sb - rr * sp
        gates[2, k], gates[3, k] = -rc * st, rc * ct + cr
        gates[4, k], gates[5, k] = -(cr * sb + rc * sp), cr * cb + rc * cp
        gates[6, k], gates[7, k] = cc - rr * ct, -rr * st


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def build_meshes(  # pragma: no cover - compiled; checked against the torch builder in tests/test_mzi_kernels.py
    out: np.ndarray,  # (M, D, n, n) complex result
    column_start: np.ndarray,  # (depth + 1,) first MZI of every column (MZIs ordered by column, then top mode)
    top: np.ndarray,  # (K,) upper mode of every MZI
    dummy_start: np.ndarray,  # (depth + 1,) first dummy section of every column
    dummy_mode: np.ndarray,  # (n_dummy,) mode of every dummy section
    theta_cs: np.ndarray,  # (M, 2, K) cos, sin of every programmed internal phase
    phi_cs: np.ndarray,  # (M, 2, K) ... external phase
    output_cs: np.ndarray,  # (M, 2, n) ... output phase
    seeds: np.ndarray,  # (M,) uint64 phase-noise stream of every mesh
    noisy: bool,  # phase noise on
    rot_cos: np.ndarray,  # (2^16,) cos(sigma t) for every table value t
    rot_sin: np.ndarray,  # (2^16,) sin(sigma t)
    ratio: np.ndarray,  # (C, K, 2) power cross-coupling ratio of both couplers of every MZI of every chip
    amp: np.ndarray,  # (C, K) field amplitude of every MZI of every chip
    dummy_amp: np.ndarray,  # (C, n_dummy) field amplitude of every dummy section, or (C, 0): lossless
    chip_meshes: int,  # chips vary per mesh (> 1) or not (1)
    chip_draws: int,  # chips vary per draw (> 1) or not (1); chip = mesh * chip_draws + draw
) -> None:
    meshes, draws, n = out.shape[0], out.shape[1], out.shape[2]
    k_total = top.shape[0]
    depth = column_start.shape[0] - 1
    per_draw = (2 * k_total + n + 3) // 4 * 4
    dtype = theta_cs.dtype
    width = (n + LANES - 1) // LANES * LANES  # padded columns stay 0
    # one more block per row and one more row between the planes: no two rows 4 KiB apart (at n = 64 they were, and
    # loads falsely waited on stores to addresses with the same low 12 bits: the whole build ran 1.9x slower)
    planes = np.zeros((2 * n + 1, width + LANES), dtype=dtype)
    wr, wi = planes[:n], planes[n + 1 :]
    index = np.zeros(per_draw, dtype=np.uint16)
    couplers = np.empty((4, k_total), dtype=dtype)
    gates = np.empty((8, k_total), dtype=dtype)
    screen = np.empty(2, dtype=dtype)
    lossy = dummy_amp.shape[1] > 0
    last_chip = -1
    for m in range(meshes):
        for d in range(draws):
            chip = (m if chip_meshes > 1 else 0) * chip_draws + (d if chip_draws > 1 else 0)
            if chip != last_chip:
                _coupler_products(ratio[chip], amp[chip], couplers)
                last_chip = chip
            if noisy:
                fill_indices(seeds[m], d * per_draw, index)
            _gates(theta_cs[m], phi_cs[m], couplers, index, noisy, rot_cos, rot_sin, gates)
            planes[:, :] = 0
            for i in range(n):
                wr[i, i] = 1
            for c in range(depth):
                for k in range(column_start[c], column_start[c + 1]):
                    t = top[k]
                    g00r, g00i, g01r, g01i = gates[0, k], gates[1, k], gates[2, k], gates[3, k]
                    g10r, g10i, g11r, g11i = gates[4, k], gates[5, k], gates[6, k], gates[7, k]
                    # after c columns row i is non-zero only in columns i - c .. i + c + 1: update whole blocks
                    lo = max(0, t - c) // LANES * LANES
                    hi = min(width, t + c + 2)
                    xr, xi, yr, yi = wr[t], wi[t], wr[t + 1], wi[t + 1]
                    for base in range(lo, hi, LANES):
                        for lane in range(LANES):
                            j = np.uint64(base + lane)  # unsigned: no negative-index wraparound, so LLVM vectorises
                            ar, ai, br, bi = xr[j], xi[j], yr[j], yi[j]
                            xr[j] = g00r * ar - g00i * ai + g01r * br - g01i * bi
                            xi[j] = g00r * ai + g00i * ar + g01r * bi + g01i * br
                            yr[j] = g10r * ar - g10i * ai + g11r * br - g11i * bi
                            yi[j] = g10r * ai + g10i * ar + g11r * bi + g11i * br
                if lossy:
                    for e in range(dummy_start[c], dummy_start[c + 1]):
                        row, scale = dummy_mode[e], dummy_amp[chip, e]
                        for j in range(width):
                            wr[row, j] *= scale
                            wi[row, j] *= scale
            result = out[m, d]
            for i in range(n):
                co, so = output_cs[m, 0, i], output_cs[m, 1, i]
                if noisy:  # stored and read back in the simulation's dtype (keeps the loop below in it)
                    u = index[2 * k_total + i]
                    screen[0], screen[1] = co * rot_cos[u] - so * rot_sin[u], so * rot_cos[u] + co * rot_sin[u]
                    co, so = screen[0], screen[1]
                row_r, row_i, row_out = wr[i], wi[i], result[i]
                for jj in range(n):
                    j = np.uint64(jj)
                    row_out[j] = complex(co * row_r[j] - so * row_i[j], so * row_r[j] + co * row_i[j])
