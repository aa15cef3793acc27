"""Compiled (Numba) CPU builder of noisy Clements mesh matrices.

The model is :func:`uhnas.hardware.mzi.mesh.mesh_matrices`' (see its module docstring for the MZI transfer and the
conventions); this is how it is computed on a CPU.  Every realisation (one mesh, one draw) is its MZIs' 2x2
transfers applied to the identity, each transfer made from the MZI's programmed phases, its noise samples and its
chip's coupler and loss values, and applied only over the matrix columns light can have reached (after c mesh
columns, row i is non-zero only in columns i - c .. i + c + 1).  Two layouts; `build_meshes` picks one:

* Small meshes (n <= LANES_MAX_N, as the MZI backend's 8 x 8): LANES = 16 realisations at a time, one per vector
  lane (the draws of a mesh, running on into the next mesh's).  Realisation by realisation, a row of 8 fills half a
  register and making the transfers (~40 operations and, with a chip per draw, 4 square roots per MZI) was scalar
  work that cost more than applying them: ~0.9 us per 8 x 8 matrix.  Here the inputs are first brought into
  (element, lane) order (programmed phases per mesh, coupler ratios and losses per chip, the noise's table values
  per batch: scalar copies and lookups), and from there the transfers of 16 draws and their application (16
  multiply-adds per MZI and matrix column) are vector arithmetic; the matrices are transposed back at the end.  The
  loss of a dummy section and the output phase screen are diagonal factors next to an MZI, so they are folded into
  its transfer (`_fold_plan`) instead of being applied to the matrix.  n = 8, 160 meshes x 32 draws, every error on:
  4.7 -> 1.8 ms.
* Large meshes: one realisation at a time in two cache-resident real planes (real, imaginary; n x n each), the
  matrix columns in the lanes; its transfers are made 16 MZIs at a time (the same vector arithmetic, MZIs in the
  lanes).

Each loop nest is a small compiled function of its own: in one fused function LLVM left most lane loops scalar.
Lane loops run over ``range(LANES)`` and index flat buffers at ``max(0, offset) + lane`` with constant offsets
between the quantities: LLVM then sees consecutive, non-negative indices (no negative-index wraparound), and one
buffer per group of accesses, so the runtime alias check it puts before a vector loop stays a few comparisons
(loops over separate rows, interleaved (K, 2) data or 2-D slices stayed scalar, or ran the scalar fallback).

Noise: the phase noise of shifter j, draw d of mesh m is the counter-based discretised normal ``d * S4 + j`` of the
mesh's stream (:mod:`uhnas.hardware.counter_rng`, S4 = 2 K + n rounded up to a multiple of 4; theta of the K MZIs
first, then phi, then the output phases).  e^{i sigma z} comes from a table (`noise_rotations`), so no sine or cosine
is evaluated per draw: e^{i (p + sigma z)} = e^{i p} e^{i sigma z} with e^{i p} of the programmed phase p, computed
once per mesh.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from numba import njit

from uhnas.hardware.counter_rng import LANE_MASK, mix
from uhnas.hardware.sampling import quantile_table

__all__ = ["LANES", "LANES_MAX_N", "build_meshes", "noise_rotations", "uses_lanes"]

LANES = 16  # realisations per batch of the small-mesh layout (one AVX-512 register of float32)
LANES_MAX_N = 48  # meshes up to this size use it (measured against the column layout: 0.52x the time at n = 8,
# 0.57x at 16, 0.77x at 32, 0.83x at 48, 0.86x at 56, equal at 64)
BLOCK = 16  # the large-mesh layout updates rows in whole blocks of this many columns
HALF = 1 << 15  # table values 2^15 .. 2^16 - 1 are >= 0; value 2^16 - 1 - u is minus value u


@lru_cache(maxsize=8)
def noise_rotations(phase_std: float, dtype: type) -> np.ndarray:
    """(2^15, 2): cos and sin of phase_std x the non-negative discretised-normal table values (table indices
    2^15 ..), from float64.  The table is antisymmetric, so half of it holds every value (see `_rotation`), and the
    half stays in the L2 cache better (the lookups are random)."""
    angle = phase_std * quantile_table(torch.float64).numpy()[HALF:]
    return np.ascontiguousarray(np.stack([np.cos(angle), np.sin(angle)], 1), dtype=dtype)


@njit(cache=True, inline="always")
def _rotation(rot: np.ndarray, u: np.int64) -> tuple:  # pragma: no cover - compiled
    """cos, sin of sigma x table value u (0 .. 2^16 - 1) from the half table of `noise_rotations`."""
    h = (u ^ ((u >> 15) - 1)) & 0x7FFF  # u - 2^15 for the upper half, 2^15 - 1 - u (the mirrored value) below
    return rot[h, 0], (rot[h, 1] if u >= HALF else -rot[h, 1])


# --------------------------------------------------------------------------------------------------- small meshes
@njit(cache=True, nogil=True)
def _fold_plan(
    column_start: np.ndarray, top: np.ndarray, dummy_start: np.ndarray, dummy_mode: np.ndarray, n: int
) -> tuple:  # pragma: no cover - compiled
    """Where the diagonal factors go.  A dummy section's loss (after column c) multiplies the input row of the next
    MZI on its mode; an output phase multiplies the output row of the last MZI on its mode, together with the
    loss of a dummy that comes after that MZI (in the last column).  Returns in_slot (K, 2): the dummy at input
    row top + s of MZI k (n_dummy: none); out_slot (K, 2): the output phase at its output row top + s (n: none);
    screen_dummy (n,): the dummy folded into output phase i (n_dummy: none).  In the rectangular mesh an edge mode
    is idle in every other column only, so no slot gets two factors."""
    k_total, n_dummy, depth = top.shape[0], dummy_mode.shape[0], column_start.shape[0] - 1
    in_slot = np.full((k_total, 2), n_dummy, dtype=np.int64)
    out_slot = np.full((k_total, 2), n, dtype=np.int64)
    screen_dummy = np.full(n, n_dummy, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    for k in range(k_total):
        last[top[k]], last[top[k] + 1] = k, k
    for i in range(n):
        if last[i] >= 0:
            out_slot[last[i], i - top[last[i]]] = i
    for c in range(depth):
        for e in range(dummy_start[c], dummy_start[c + 1]):
            row = dummy_mode[e]
            screen_dummy[row] = e  # unless an MZI follows
            for k in range(column_start[c + 1], k_total):
                if top[k] == row or top[k] + 1 == row:
                    in_slot[k, row - top[k]], screen_dummy[row] = e, n_dummy
                    break
    return in_slot, out_slot, screen_dummy


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_nominal(
    theta_cs: np.ndarray,
    phi_cs: np.ndarray,
    output_cs: np.ndarray,
    mesh: np.ndarray,
    nominal: np.ndarray,
    nominal_out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """nominal[k, 0..3, lane] = cos, sin of the programmed theta, phi of MZI k of the lane's mesh; nominal_out[i,
    0..1, lane] those of output phase i."""
    k_total, n, m = theta_cs.shape[2], output_cs.shape[2], mesh[0]
    if mesh[LANES - 1] == m:  # (meshes ascend over the lanes) one mesh in all lanes: fill blocks, 3x faster
        for k in range(k_total):
            o = k * 4 * LANES
            nominal[o : o + LANES], nominal[o + LANES : o + 2 * LANES] = theta_cs[m, 0, k], theta_cs[m, 1, k]
            nominal[o + 2 * LANES : o + 3 * LANES] = phi_cs[m, 0, k]
            nominal[o + 3 * LANES : o + 4 * LANES] = phi_cs[m, 1, k]
        for i in range(n):
            o = i * 2 * LANES
            nominal_out[o : o + LANES], nominal_out[o + LANES : o + 2 * LANES] = output_cs[m, 0, i], output_cs[m, 1, i]
        return
    for k in range(k_total):
        o = max(0, k * 4 * LANES)
        for lane in range(LANES):
            m = mesh[lane]
            nominal[o + lane], nominal[o + LANES + lane] = theta_cs[m, 0, k], theta_cs[m, 1, k]
            nominal[o + 2 * LANES + lane], nominal[o + 3 * LANES + lane] = phi_cs[m, 0, k], phi_cs[m, 1, k]
    for i in range(n):
        o = max(0, i * 2 * LANES)
        for lane in range(LANES):
            m = mesh[lane]
            nominal_out[o + lane], nominal_out[o + LANES + lane] = output_cs[m, 0, i], output_cs[m, 1, i]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_chips(
    ratio: np.ndarray, amp: np.ndarray, dummy_amp: np.ndarray, chip: np.ndarray, raw: np.ndarray, dummy: np.ndarray
) -> None:  # pragma: no cover - compiled
    """raw[0..2, k * LANES + lane] = both coupling ratios and the field amplitude of MZI k on the lane's chip;
    dummy[e * LANES + lane] = the field amplitude of dummy section e."""
    for k in range(ratio.shape[1]):
        o = max(0, k * LANES)
        for lane in range(LANES):
            c = chip[lane]
            raw[0, o + lane], raw[1, o + lane], raw[2, o + lane] = ratio[c, k, 0], ratio[c, k, 1], amp[c, k]
    for e in range(dummy_amp.shape[1]):
        o = max(0, e * LANES)
        for lane in range(LANES):
            dummy[o + lane] = dummy_amp[chip[lane], e]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_couplers(raw: np.ndarray, couplers: np.ndarray) -> None:  # pragma: no cover - compiled
    """couplers[k, 0..3, lane] = amp c1 c2, amp r1 r2, amp r1 c2, amp c1 r2 (r = sqrt(ratio), c = sqrt(1 - ratio))."""
    one = raw.dtype.type(1)
    for k in range(raw.shape[1] // LANES):
        i, o = max(0, k * LANES), max(0, k * 4 * LANES)
        for lane in range(LANES):
            k1, k2, a = raw[0, i + lane], raw[1, i + lane], raw[2, i + lane]
            r1, c1, r2, c2 = np.sqrt(k1), np.sqrt(one - k1), np.sqrt(k2), np.sqrt(one - k2)
            couplers[o + lane], couplers[o + LANES + lane] = c1 * c2 * a, r1 * r2 * a
            couplers[o + 2 * LANES + lane], couplers[o + 3 * LANES + lane] = r1 * c2 * a, c1 * r2 * a


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_indices(seed: np.ndarray, word: np.ndarray, index: np.ndarray) -> None:  # pragma: no cover - compiled
    """index[j * LANES + lane] = table index of sample j of the lane's draw: 64-bit word word[lane] + j // 4 of
    stream seed[lane], 16-bit part j % 4 (`counter_rng.fill_indices`, 16 streams at once)."""
    for q in range(index.shape[0] // (4 * LANES)):
        o = max(0, 4 * q * LANES)
        for lane in range(LANES):
            bits = mix(seed[lane], word[lane] + np.uint64(q))
            index[o + lane] = np.uint16(bits & LANE_MASK)
            index[o + LANES + lane] = np.uint16((bits >> np.uint64(16)) & LANE_MASK)
            index[o + 2 * LANES + lane] = np.uint16((bits >> np.uint64(32)) & LANE_MASK)
            index[o + 3 * LANES + lane] = np.uint16((bits >> np.uint64(48)) & LANE_MASK)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_rotations(
    index: np.ndarray, k_total: int, n: int, rot: np.ndarray, noise: np.ndarray, noise_out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """noise[k, 0..3, lane] = cos, sin of the noise of theta, then of phi of MZI k; noise_out[i, 0..1, lane] of
    output phase i.  Table lookups at random places: scalar (the one loop here that LLVM does not vectorise)."""
    for k in range(k_total):
        for lane in range(LANES):
            o = k * 4 * LANES + lane
            noise[o], noise[o + LANES] = _rotation(rot, np.int64(index[k * LANES + lane]))
            v = np.int64(index[(k_total + k) * LANES + lane])
            noise[o + 2 * LANES], noise[o + 3 * LANES] = _rotation(rot, v)
    for i in range(n):
        for lane in range(LANES):
            o = i * 2 * LANES + lane
            noise_out[o], noise_out[o + LANES] = _rotation(rot, np.int64(index[(2 * k_total + i) * LANES + lane]))


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_screen(
    nominal_out: np.ndarray,
    noise_out: np.ndarray,
    noisy: bool,
    dummy: np.ndarray,
    screen_dummy: np.ndarray,
    screen: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """screen[i, 0..1, lane] = e^{i output phase i} times the amplitude of a dummy folded into it (`_fold_plan`)."""
    for i in range(screen_dummy.shape[0]):
        o, e = max(0, i * 2 * LANES), max(0, screen_dummy[i] * LANES)
        for lane in range(LANES):
            co, so = nominal_out[o + lane], nominal_out[o + LANES + lane]
            if noisy:
                cu, su = noise_out[o + lane], noise_out[o + LANES + lane]
                co, so = co * cu - so * su, so * cu + co * su
            f = dummy[e + lane]
            screen[o + lane], screen[o + LANES + lane] = co * f, so * f


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_gates(
    nominal: np.ndarray,
    noise: np.ndarray,
    noisy: bool,
    couplers: np.ndarray,
    dummy: np.ndarray,
    screen: np.ndarray,
    in_slot: np.ndarray,
    out_slot: np.ndarray,
    gates: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """gates[k, 0..7, lane]: re, im of G00, G01, G10, G11 of MZI k in every lane, G = diag(output phases folded
    into it) T diag(dummy amplitudes folded into it) (`_fold_plan`), T the MZI's transfer (below)."""
    for k in range(in_slot.shape[0]):
        i, o = max(0, k * 4 * LANES), max(0, k * 8 * LANES)
        e0, e1 = max(0, in_slot[k, 0] * LANES), max(0, in_slot[k, 1] * LANES)
        s0, s1 = max(0, out_slot[k, 0] * 2 * LANES), max(0, out_slot[k, 1] * 2 * LANES)
        for lane in range(LANES):
            p = i + lane
            ct, st, cp, sp = nominal[p], nominal[p + LANES], nominal[p + 2 * LANES], nominal[p + 3 * LANES]
            if noisy:  # e^{i (p + sigma z)} = e^{i p} e^{i sigma z}
                cu, su, cv, sv = noise[p], noise[p + LANES], noise[p + 2 * LANES], noise[p + 3 * LANES]
                ct, st = ct * cu - st * su, st * cu + ct * su
                cp, sp = cp * cv - sp * sv, sp * cv + cp * sv
            cb, sb = ct * cp - st * sp, st * cp + ct * sp  # e^{i (theta + phi)}
            cc, rr, rc, cr = couplers[p], couplers[p + LANES], couplers[p + 2 * LANES], couplers[p + 3 * LANES]
            a0, a1 = dummy[e0 + lane], dummy[e1 + lane]
            # T00 = cc e^{i(t+p)} - rr e^{ip}; T01 = i (rc e^{it} + cr); T10 = i (cr e^{i(t+p)} + rc e^{ip});
            # T11 = cc - rr e^{it}   (amplitude coupling products times the MZI's field amplitude)
            t00r, t00i = (cc * cb - rr * cp) * a0, (cc * sb - rr * sp) * a0
            t01r, t01i = -rc * st * a1, (rc * ct + cr) * a1
            t10r, t10i = -(cr * sb + rc * sp) * a0, (cr * cb + rc * cp) * a0
            t11r, t11i = (cc - rr * ct) * a1, -rr * st * a1
            u0r, u0i = screen[s0 + lane], screen[s0 + LANES + lane]
            u1r, u1i = screen[s1 + lane], screen[s1 + LANES + lane]
            q = o + lane
            gates[q], gates[q + LANES] = u0r * t00r - u0i * t00i, u0r * t00i + u0i * t00r
            gates[q + 2 * LANES], gates[q + 3 * LANES] = u0r * t01r - u0i * t01i, u0r * t01i + u0i * t01r
            gates[q + 4 * LANES], gates[q + 5 * LANES] = u1r * t10r - u1i * t10i, u1r * t10i + u1i * t10r
            gates[q + 6 * LANES], gates[q + 7 * LANES] = u1r * t11r - u1i * t11i, u1r * t11i + u1i * t11r


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_mesh(
    column_start: np.ndarray, top: np.ndarray, gates: np.ndarray, n: int, w: np.ndarray
) -> None:  # pragma: no cover - compiled
    """w[j * (2 n + 1) * LANES + (2 i + 0..1) * LANES + lane] = re, im of element (i, j) of every lane's matrix: the
    gates applied to the identity.  The half block of padding per matrix column keeps columns from lying a multiple
    of 4 KiB apart (n = 32: loads of one column falsely waited on the stores to the one before)."""
    stride = (2 * n + 1) * LANES
    w[:] = 0
    for i in range(n):
        o = max(0, i * stride + i * 2 * LANES)
        for lane in range(LANES):
            w[o + lane] = 1
    _lane_apply(column_start, top, gates, n, w, True)


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_apply(
    column_start: np.ndarray, top: np.ndarray, gates: np.ndarray, n: int, w: np.ndarray, from_identity: bool
) -> None:  # pragma: no cover - compiled
    """w := the gates applied to the matrices w holds (`_lane_mesh`'s layout); ``from_identity``: w held the
    identity, so after c columns only the columns light can have reached are updated."""
    stride = (2 * n + 1) * LANES
    for c in range(column_start.shape[0] - 1):
        for k in range(column_start[c], column_start[c + 1]):
            t = top[k]
            g = max(0, k * 8 * LANES)
            # after c columns row i is non-zero only in columns i - c .. i + c + 1; rows t, t + 1 of a matrix
            # column are adjacent (one block of 4 x LANES values)
            lo, hi = (max(0, t - c), min(n, t + c + 2)) if from_identity else (0, n)
            for j in range(lo, hi):
                o = max(0, j * stride + t * 2 * LANES)
                for lane in range(LANES):
                    q = g + lane  # the gate values are read once, before the stores (else twice: they might alias)
                    g0, g1, g2, g3 = gates[q], gates[q + LANES], gates[q + 2 * LANES], gates[q + 3 * LANES]
                    g4, g5 = gates[q + 4 * LANES], gates[q + 5 * LANES]
                    g6, g7 = gates[q + 6 * LANES], gates[q + 7 * LANES]
                    p = o + lane
                    ar, ai, br, bi = w[p], w[p + LANES], w[p + 2 * LANES], w[p + 3 * LANES]
                    w[p] = g0 * ar - g1 * ai + g2 * br - g3 * bi
                    w[p + LANES] = g0 * ai + g1 * ar + g2 * bi + g3 * br
                    w[p + 2 * LANES] = g4 * ar - g5 * ai + g6 * br - g7 * bi
                    w[p + 3 * LANES] = g4 * ai + g5 * ar + g6 * bi + g7 * br


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_store(
    w: np.ndarray, result: np.ndarray, first: int, count: int, n: int
) -> None:  # pragma: no cover - compiled
    """result[first + lane] = the matrix of lane ``lane`` (lane < count) as n x n (re, im) pairs, from `_lane_mesh`'s
    w: the transpose back, scalar."""
    stride = (2 * n + 1) * LANES
    for lane in range(count):
        out = result[first + lane]
        for i in range(n):
            for j in range(n):
                p, q = j * stride + i * 2 * LANES + lane, (i * n + j) * 2
                out[q], out[q + 1] = w[p], w[p + LANES]


@njit(cache=True, nogil=True)
def _changed(now: np.ndarray, done: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Whether the lanes' meshes or chips differ from those their buffers hold; done := now."""
    changed = False
    for lane in range(LANES):
        changed = changed or now[lane] != done[lane]
        done[lane] = now[lane]
    return changed


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_state(k_total: int, n: int, n_dummy: int, words: int, dtype: type) -> tuple:  # pragma: no cover - compiled
    """The buffers `_lane_transfers` fills for LANES realisations, and the meshes and chips they hold (none yet)."""
    screen = np.zeros((n + 1) * 2 * LANES, dtype=dtype)
    screen[n * 2 * LANES : n * 2 * LANES + LANES] = 1  # the entry for no output phase: 1 + 0i
    return (
        np.zeros(4 * words * LANES, dtype=np.uint16),  # noise table indices
        np.zeros(k_total * 4 * LANES, dtype=dtype),
        np.zeros(n * 2 * LANES, dtype=dtype),  # nominal, _out
        np.zeros(k_total * 4 * LANES, dtype=dtype),
        np.zeros(n * 2 * LANES, dtype=dtype),  # noise, _out
        np.zeros((3, k_total * LANES), dtype=dtype),
        np.zeros(k_total * 4 * LANES, dtype=dtype),  # raw, couplers
        np.ones((n_dummy + 1) * LANES, dtype=dtype),  # dummy amplitudes; the last entry stands for no dummy: 1
        screen,
        np.zeros(k_total * 8 * LANES, dtype=dtype),  # screen, gates
        np.full(LANES, -1, dtype=np.int64),
        np.full(LANES, -1, dtype=np.int64),
    )  # meshes, chips held


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _lane_transfers(
    state, mesh, chip, seed, word, plan, theta_cs, phi_cs, output_cs, noisy, rot, ratio, amp, dummy_amp
) -> np.ndarray:  # pragma: no cover - compiled
    """The gates (`_lane_gates`) of the lanes' realisations: mesh[lane] on chip[lane], phase noise from word[lane]
    of stream seed[lane]; per-mesh and per-chip values are recomputed only where they changed."""
    index, nominal, nominal_out, noise, noise_out, raw, couplers, dummy, screen, gates, mesh_done, chip_done = state
    in_slot, out_slot, screen_dummy = plan
    if _changed(mesh, mesh_done):  # per mesh (draws >= LANES) or per batch
        _lane_nominal(theta_cs, phi_cs, output_cs, mesh, nominal, nominal_out)
    if _changed(chip, chip_done):  # per batch (a chip per draw), per mesh or once
        _lane_chips(ratio, amp, dummy_amp, chip, raw, dummy)
        _lane_couplers(raw, couplers)
    if noisy:
        _lane_indices(seed, word, index)
        _lane_rotations(index, in_slot.shape[0], output_cs.shape[2], rot, noise, noise_out)
    _lane_screen(nominal_out, noise_out, noisy, dummy, screen_dummy, screen)
    _lane_gates(nominal, noise, noisy, couplers, dummy, screen, in_slot, out_slot, gates)
    return gates


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _build_lanes(
    out,
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
    chip_meshes,
    chip_draws,
) -> None:  # pragma: no cover - compiled
    """`build_meshes` for small n: LANES realisations (mesh-major, draw-minor) at a time, one per lane."""
    meshes, draws, n = out.shape[0], out.shape[1], out.shape[2]
    k_total, n_dummy = top.shape[0], dummy_mode.shape[0]
    words = (2 * k_total + n + 3) // 4  # 64-bit noise words per draw (S4 / 4)
    dtype = theta_cs.dtype
    total = meshes * draws
    result = out.reshape(-1).view(dtype).reshape(total, 2 * n * n)  # (complex stores were 1.5x slower)
    plan = _fold_plan(column_start, top, dummy_start, dummy_mode, n)
    state = _lane_state(k_total, n, n_dummy, words, dtype)
    w = np.zeros(n * (2 * n + 1) * LANES, dtype=dtype)
    mesh, chip = np.zeros(LANES, dtype=np.int64), np.zeros(LANES, dtype=np.int64)
    seed, word = np.zeros(LANES, dtype=np.uint64), np.zeros(LANES, dtype=np.uint64)
    for first in range(0, total, LANES):
        m, d = first // draws, first % draws
        for lane in range(LANES):  # lanes past the end repeat the last realisation (computed, not stored)
            mesh[lane], seed[lane], word[lane] = m, seeds[m], np.uint64(d * words)
            chip[lane] = (m if chip_meshes > 1 else 0) * chip_draws + (d if chip_draws > 1 else 0)
            if first + lane + 1 < total:
                m, d = (m + 1, 0) if d + 1 == draws else (m, d + 1)
        gates = _lane_transfers(
            state, mesh, chip, seed, word, plan, theta_cs, phi_cs, output_cs, noisy, rot, ratio, amp, dummy_amp
        )
        _lane_mesh(column_start, top, gates, n, w)
        _lane_store(w, result, first, min(LANES, total - first), n)


# --------------------------------------------------------------------------------------------------- large meshes
# The transfers of one realisation are computed LANES MZIs at a time: every per-MZI buffer below is laid out in
# blocks (K rounded up to a multiple of LANES) of (quantity, lane) with MZI k = block * LANES + lane, so that the
# loops read and write consecutive lanes at constant offsets (interleaved or many separate rows kept LLVM from
# vectorising them: the coupler loop over the (K, 2) ratios ran 6x slower, the gate loop 3x).
@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _column_couplers(
    ratio: np.ndarray, amp: np.ndarray, planar: np.ndarray, couplers: np.ndarray
) -> None:  # pragma: no cover - compiled
    """couplers[block, 0..3, lane] = amp c1 c2, amp r1 r2, amp r1 c2, amp c1 r2 of one chip's MZIs (see
    `_lane_couplers`); planar (3, blocks * LANES): scratch, both ratios and the amplitude deinterleaved.

    The lane loop repeats `_lane_couplers`' five lines on purpose: moved into a shared inlined helper returning the
    four products, the n = 8 build measured slower (2.4-2.8 ms against 1.7-1.9 ms for 160 meshes x 32 draws)."""
    for k in range(ratio.shape[0]):  # (the padding stays 0: finite values for MZIs that do not exist)
        planar[0, k], planar[1, k], planar[2, k] = ratio[k, 0], ratio[k, 1], amp[k]
    one = ratio.dtype.type(1)  # (a plain 1 - k1 would promote float32 to float64)
    for b in range(couplers.shape[0] // (4 * LANES)):
        i, o = max(0, b * LANES), max(0, b * 4 * LANES)
        for lane in range(LANES):
            k1, k2, a = planar[0, i + lane], planar[1, i + lane], planar[2, i + lane]
            r1, c1, r2, c2 = np.sqrt(k1), np.sqrt(one - k1), np.sqrt(k2), np.sqrt(one - k2)
            couplers[o + lane], couplers[o + LANES + lane] = c1 * c2 * a, r1 * r2 * a
            couplers[o + 2 * LANES + lane], couplers[o + 3 * LANES + lane] = r1 * c2 * a, c1 * r2 * a


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _column_nominal(
    theta_cs: np.ndarray, phi_cs: np.ndarray, nominal: np.ndarray
) -> None:  # pragma: no cover - compiled
    """nominal[block, 0..3, lane] = cos, sin of the programmed theta, then phi of one mesh's MZIs."""
    for k in range(theta_cs.shape[1]):
        o = k // LANES * 4 * LANES + k % LANES
        nominal[o], nominal[o + LANES] = theta_cs[0, k], theta_cs[1, k]
        nominal[o + 2 * LANES], nominal[o + 3 * LANES] = phi_cs[0, k], phi_cs[1, k]


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _column_noise(
    seed: np.uint64, word: np.uint64, k_total: int, n: int, rot: np.ndarray, noise: np.ndarray, noise_out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """noise[block, 0..3, lane] = cos, sin of the noise of theta, then phi of one draw's MZIs; noise_out[i, 0..1] of
    its output phases.  Sample j is 16-bit part j % 4 of word ``word + j // 4`` of stream ``seed`` (as
    `counter_rng.fill_indices`); table lookups at random places: scalar."""
    for q in range((2 * k_total + n + 3) // 4):
        bits = mix(seed, word + np.uint64(q))
        for part in range(4):
            j = 4 * q + part
            c, s = _rotation(rot, np.int64((bits >> np.uint64(16 * part)) & LANE_MASK))
            if j < 2 * k_total:
                k = j if j < k_total else j - k_total
                o = k // LANES * 4 * LANES + k % LANES + (0 if j < k_total else 2 * LANES)
                noise[o], noise[o + LANES] = c, s
            elif j < 2 * k_total + n:
                noise_out[j - 2 * k_total, 0], noise_out[j - 2 * k_total, 1] = c, s


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _column_gates(
    nominal: np.ndarray, noise: np.ndarray, noisy: bool, couplers: np.ndarray, gates: np.ndarray
) -> None:  # pragma: no cover - compiled
    """gates[block, 0..7, lane]: re, im of T00, T01, T10, T11 of one realisation's MZIs (see `_lane_gates`)."""
    for b in range(nominal.shape[0] // (4 * LANES)):
        i, o = max(0, b * 4 * LANES), max(0, b * 8 * LANES)
        for lane in range(LANES):
            p = i + lane
            ct, st, cp, sp = nominal[p], nominal[p + LANES], nominal[p + 2 * LANES], nominal[p + 3 * LANES]
            if noisy:  # e^{i (p + sigma z)} = e^{i p} e^{i sigma z}
                cu, su, cv, sv = noise[p], noise[p + LANES], noise[p + 2 * LANES], noise[p + 3 * LANES]
                ct, st = ct * cu - st * su, st * cu + ct * su
                cp, sp = cp * cv - sp * sv, sp * cv + cp * sv
            cb, sb = ct * cp - st * sp, st * cp + ct * sp  # e^{i (theta + phi)}
            cc, rr, rc, cr = couplers[p], couplers[p + LANES], couplers[p + 2 * LANES], couplers[p + 3 * LANES]
            q = o + lane
            gates[q], gates[q + LANES] = cc * cb - rr * cp, cc * sb - rr * sp
            gates[q + 2 * LANES], gates[q + 3 * LANES] = -rc * st, rc * ct + cr
            gates[q + 4 * LANES], gates[q + 5 * LANES] = -(cr * sb + rc * sp), cr * cb + rc * cp
            gates[q + 6 * LANES], gates[q + 7 * LANES] = cc - rr * ct, -rr * st


@njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _build_columns(
    out,
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
    chip_meshes,
    chip_draws,
) -> None:  # pragma: no cover - compiled
    """`build_meshes` for large n: one realisation at a time, the matrix columns in the lanes."""
    meshes, draws, n = out.shape[0], out.shape[1], out.shape[2]
    k_total = top.shape[0]
    depth = column_start.shape[0] - 1
    words = (2 * k_total + n + 3) // 4  # 64-bit noise words per draw (S4 / 4)
    dtype = theta_cs.dtype
    blocks = (k_total + LANES - 1) // LANES
    width = (n + BLOCK - 1) // BLOCK * BLOCK  # padded columns stay 0
    # one more block per row and one more row between the planes: no two rows 4 KiB apart (at n = 64 they were, and
    # loads falsely waited on stores to addresses with the same low 12 bits: the whole build ran 1.9x slower)
    planes = np.zeros((2 * n + 1, width + BLOCK), dtype=dtype)
    wr, wi = planes[:n], planes[n + 1 :]
    planar = np.zeros((3, blocks * LANES), dtype=dtype)
    couplers = np.zeros(blocks * 4 * LANES, dtype=dtype)
    nominal = np.zeros(blocks * 4 * LANES, dtype=dtype)
    noise = np.zeros(blocks * 4 * LANES, dtype=dtype)
    noise_out = np.zeros((n, 2), dtype=dtype)
    gates = np.zeros(blocks * 8 * LANES, dtype=dtype)
    screen = np.empty(2, dtype=dtype)
    lossy = dummy_amp.shape[1] > 0
    last_chip = -1
    for m in range(meshes):
        _column_nominal(theta_cs[m], phi_cs[m], nominal)
        for d in range(draws):
            chip = (m if chip_meshes > 1 else 0) * chip_draws + (d if chip_draws > 1 else 0)
            if chip != last_chip:
                _column_couplers(ratio[chip], amp[chip], planar, couplers)
                last_chip = chip
            if noisy:
                _column_noise(seeds[m], np.uint64(d * words), k_total, n, rot, noise, noise_out)
            _column_gates(nominal, noise, noisy, couplers, gates)
            planes[:, :] = 0
            for i in range(n):
                wr[i, i] = 1
            for c in range(depth):
                for k in range(column_start[c], column_start[c + 1]):
                    t = top[k]
                    g = k // LANES * 8 * LANES + k % LANES
                    g00r, g00i, g01r, g01i = gates[g], gates[g + LANES], gates[g + 2 * LANES], gates[g + 3 * LANES]
                    g10r, g10i = gates[g + 4 * LANES], gates[g + 5 * LANES]
                    g11r, g11i = gates[g + 6 * LANES], gates[g + 7 * LANES]
                    # after c columns row i is non-zero only in columns i - c .. i + c + 1: update whole blocks
                    lo = max(0, t - c) // BLOCK * BLOCK
                    hi = min(width, t + c + 2)
                    xr, xi, yr, yi = wr[t], wi[t], wr[t + 1], wi[t + 1]
                    for base in range(lo, hi, BLOCK):
                        for lane in range(BLOCK):
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
                    cu, su = noise_out[i, 0], noise_out[i, 1]
                    screen[0], screen[1] = co * cu - so * su, so * cu + co * su
                    co, so = screen[0], screen[1]
                row_r, row_i, row_out = wr[i], wi[i], result[i]
                for jj in range(n):
                    j = np.uint64(jj)
                    row_out[j] = complex(co * row_r[j] - so * row_i[j], so * row_r[j] + co * row_i[j])


def uses_lanes(n: int, realisations: int) -> bool:
    """Whether ``realisations`` n x n meshes are built in the small-mesh layout: n <= LANES_MAX_N and at least 3/4
    of the lanes have a realisation to compute."""
    return 2 <= n <= LANES_MAX_N and 4 * realisations >= 3 * (-(-realisations // LANES) * LANES)


def build_meshes(  # checked against the torch builder in tests/test_mzi_kernels.py
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
    rot: np.ndarray,  # (2^15, 2) cos, sin of sigma t for the table values t >= 0 (`noise_rotations`; any if not noisy)
    ratio: np.ndarray,  # (C, K, 2) power cross-coupling ratio of both couplers of every MZI of every chip
    amp: np.ndarray,  # (C, K) field amplitude of every MZI of every chip
    dummy_amp: np.ndarray,  # (C, n_dummy) field amplitude of every dummy section, or (C, 0): lossless
    chip_meshes: int,  # chips vary per mesh (> 1) or not (1)
    chip_draws: int,  # chips vary per draw (> 1) or not (1); chip = mesh * chip_draws + draw
) -> None:
    """Fill ``out`` with the matrix of every mesh and draw: the small-mesh layout where n <= LANES_MAX_N and at
    least 3/4 of its lanes have a realisation to compute, else the large-mesh one (see the module docstring).
    Chosen here, not in compiled code, so that a process compiles only the layout it uses (~8 s for the small-mesh
    one, once per dtype; Numba caches it on disk)."""
    build = _build_lanes if uses_lanes(out.shape[2], out.shape[0] * out.shape[1]) else _build_columns
    build(
        out,
        column_start,
        top,
        dummy_start,
        dummy_mode,
        theta_cs,
        phi_cs,
        output_cs,
        seeds,
        bool(noisy),
        rot,
        ratio,
        amp,
        dummy_amp,
        int(chip_meshes),
        int(chip_draws),
    )
