"""Compiled (Numba) CPU Monte-Carlo forward of a realised MZI layer: DAC, blocks, detector noise, ADC, accumulation.

The model is `_Inference`'s (uhnas.hardware.mzi.backend): per draw d, input vector v and column tile c, the DAC
codes a = round(L_in x / s) of the tile's K inputs (s: their largest magnitude), the detected partial sums
y[o] = sum_k W[c, d, o, k] a[k] + sigma[c, o] z in ADC steps, the ADC's round and clamp, and the digital
accumulation out[o] += y[o] q[c, o] s, then the bias.  Here all of it is one loop nest over chunks of input
vectors (the vectorised axis, a compile-time length) that stay in L1: per column tile, one pass makes the partial
sums of four outputs at once (each code loaded once for the four), then one pass per output adds its noise,
rounds, clamps and accumulates, instead of six passes over memory per output.

Inputs and outputs are addressed through offset tables, so the kernel reads any strided layout in place: input
(d, v, col) is ``src[draw_offset[d] + vector_offset[v] + column_offset[col]]`` (a conv layer's im2col windows are
read straight from the padded activations, with no unfolded copy), and output (d, v, o) goes to
``out[out_draw_offset[d] + out_vector_offset[v] + out_offset[o]]`` (a conv layer writes NCHW directly).  Per-draw
inputs are processed draw by draw (one draw's activations and blocks stay in cache); inputs shared by every draw
(a single draw offset) chunk by chunk, their codes made once for all draws.

The detector noise of (d, c, o, v) is sample ``start + ((d C + c) out + o) n4 + v`` of the layer's counter-based
stream (:mod:`uhnas.hardware.counter_rng`; n4 = n rounded up to a multiple of 4), drawn where it is used.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from uhnas.hardware.counter_rng import LANE_MASK, mix

__all__ = ["VECTORS", "forward_layer", "samples_used"]

VECTORS = 128  # input vectors per chunk: a chunk's codes, partial sums and noise stay in L1 or next to it (measured
# against 64: 10-17 % faster on the example MLP's and CNN's layers; 32 and 256 slower)


def samples_used(draws: int, tiles: int, outputs: int, vectors: int) -> int:
    """Stream samples one forward_layer call uses (the next call starts after them)."""
    return draws * tiles * outputs * ((vectors + 3) // 4 * 4)


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy", boundscheck=False)
def forward_layer(  # pragma: no cover - compiled; checked against the torch forward in tests/test_mzi_backend.py
    src: np.ndarray,  # flat input storage
    draw_offset: np.ndarray,  # (D or 1,) int64; one entry: the same inputs for every draw
    vector_offset: np.ndarray,  # (n,) int64
    column_offset: np.ndarray,  # (in,) int64
    weights: np.ndarray,  # (C, D, out, K) blocks in ADC steps per DAC code
    noise_std: np.ndarray,  # (C, out) detector noise in ADC steps
    out_scale: np.ndarray,  # (C, out) one ADC step in output units per unit input scale
    dac_levels: int,  # L_in (0: no DAC, inputs scaled but not rounded)
    adc_levels: int,  # L_out (0: no ADC)
    noisy: bool,
    seed: np.uint64,
    start: np.int64,  # first stream sample of this call (a multiple of 4)
    table: np.ndarray,  # (2^16,) discretised normal
    bias: np.ndarray,  # (out,) added to every output
    out: np.ndarray,  # flat output storage, every addressed element overwritten
    out_draw_offset: np.ndarray,  # (D,) int64
    out_vector_offset: np.ndarray,  # (n,) int64
    out_offset: np.ndarray,  # (out,) int64
) -> None:
    c_tiles, draws, outputs, k = weights.shape
    n, cols = vector_offset.shape[0], column_offset.shape[0]
    shared = draw_offset.shape[0] == 1 and draws > 1
    n4 = (n + 3) // 4 * 4
    dtype = weights.dtype
    tiny = np.finfo(dtype).tiny
    levels_in = dtype.type(dac_levels)
    lim = dtype.type(adc_levels)
    # every pass below runs over a whole chunk (a constant trip count the compiler unrolls into vector registers);
    # lanes past the last vector hold zero codes and are never stored
    codes = np.zeros((c_tiles, k, VECTORS), dtype=dtype)
    scale = np.empty((c_tiles, VECTORS), dtype=dtype)
    z = np.zeros(VECTORS, dtype=dtype)  # lanes past the last vector keep finite values
    acc4 = np.empty((4, VECTORS), dtype=dtype)
    y4 = np.empty((4, VECTORS), dtype=dtype)
    chunks = (n + VECTORS - 1) // VECTORS
    outer, inner = (chunks, draws) if shared else (draws, chunks)
    for i in range(outer):
        for j in range(inner):
            chunk, d = (i, j) if shared else (j, i)
            v0 = chunk * VECTORS
            m = min(VECTORS, n - v0)
            if d == 0 or not shared:  # DAC codes and per-tile scales of this chunk
                base = draw_offset[0 if shared else d]
                for c in range(c_tiles):
                    sc = scale[c]
                    for vi in range(VECTORS):
                        sc[vi] = tiny
                    for kk in range(min(k, cols - c * k)):  # the tile's real columns (padding is never read)
                        cc = codes[c, kk]
                        at = base + column_offset[c * k + kk]
                        for vi in range(m):
                            cc[vi] = src[at + vector_offset[v0 + vi]]
                        for vi in range(m, VECTORS):
                            cc[vi] = 0
                        for vi in range(VECTORS):  # (a pass of its own: vectorised, not in the gather above)
                            sc[vi] = max(sc[vi], abs(cc[vi]))
                    for kk in range(min(k, cols - c * k)):
                        cc = codes[c, kk]
                        if dac_levels > 0:
                            for vi in range(VECTORS):
                                cc[vi] = np.rint((cc[vi] / sc[vi]) * levels_in)  # |x / s| <= 1 exactly: no clamp
                        else:
                            for vi in range(VECTORS):
                                cc[vi] = cc[vi] / sc[vi]
            for o0 in range(0, outputs, 4):  # four outputs at a time: each code is loaded once for all four
                # (their partial sums in registers; 20-25 % faster than one at a time; 2, 6 and 8 no better)
                oa, ob, oc, od = o0, min(o0 + 1, outputs - 1), min(o0 + 2, outputs - 1), min(o0 + 3, outputs - 1)
                for j in range(4):
                    for vi in range(VECTORS):
                        acc4[j, vi] = 0
                for c in range(c_tiles):
                    cw = codes[c]
                    wa, wb, wc, wd = weights[c, d, oa], weights[c, d, ob], weights[c, d, oc], weights[c, d, od]
                    live = min(k, cols - c * k)
                    for kk in range(0, live - 3, 4):
                        a0, a1, a2, a3 = wa[kk], wa[kk + 1], wa[kk + 2], wa[kk + 3]
                        b0, b1, b2, b3 = wb[kk], wb[kk + 1], wb[kk + 2], wb[kk + 3]
                        e0, e1, e2, e3 = wc[kk], wc[kk + 1], wc[kk + 2], wc[kk + 3]
                        f0, f1, f2, f3 = wd[kk], wd[kk + 1], wd[kk + 2], wd[kk + 3]
                        if kk == 0:
                            for vi in range(VECTORS):
                                x0, x1, x2, x3 = cw[kk, vi], cw[kk + 1, vi], cw[kk + 2, vi], cw[kk + 3, vi]
                                y4[0, vi] = a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                                y4[1, vi] = b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                                y4[2, vi] = e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
                                y4[3, vi] = f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
                        else:
                            for vi in range(VECTORS):
                                x0, x1, x2, x3 = cw[kk, vi], cw[kk + 1, vi], cw[kk + 2, vi], cw[kk + 3, vi]
                                y4[0, vi] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                                y4[1, vi] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                                y4[2, vi] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
                                y4[3, vi] += f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
                    for kk in range(live - live % 4, live):
                        a0, b0, e0, f0 = wa[kk], wb[kk], wc[kk], wd[kk]
                        if kk == 0:
                            for vi in range(VECTORS):
                                x0 = cw[kk, vi]
                                y4[0, vi], y4[1, vi], y4[2, vi], y4[3, vi] = a0 * x0, b0 * x0, e0 * x0, f0 * x0
                        else:
                            for vi in range(VECTORS):
                                x0 = cw[kk, vi]
                                y4[0, vi] += a0 * x0
                                y4[1, vi] += b0 * x0
                                y4[2, vi] += e0 * x0
                                y4[3, vi] += f0 * x0
                    sc = scale[c]
                    for j in range(min(4, outputs - o0)):
                        o = o0 + j
                        y = y4[j]
                        acc = acc4[j]
                        unit = out_scale[c, o]
                        if noisy:
                            std = noise_std[c, o]
                            word = np.uint64((start + ((d * c_tiles + c) * outputs + o) * n4 + v0) // 4)
                            for q in range((m + 3) // 4):
                                bits = mix(seed, word + np.uint64(q))
                                for lane in range(4):
                                    z[4 * q + lane] = table[(bits >> np.uint64(16 * lane)) & LANE_MASK]
                            if adc_levels > 0:
                                for vi in range(VECTORS):
                                    acc[vi] += min(max(np.rint(y[vi] + std * z[vi]), -lim), lim) * unit * sc[vi]
                            else:
                                for vi in range(VECTORS):
                                    acc[vi] += (y[vi] + std * z[vi]) * unit * sc[vi]
                        elif adc_levels > 0:
                            for vi in range(VECTORS):
                                acc[vi] += min(max(np.rint(y[vi]), -lim), lim) * unit * sc[vi]
                        else:
                            for vi in range(VECTORS):
                                acc[vi] += y[vi] * unit * sc[vi]
                for j in range(min(4, outputs - o0)):
                    o = o0 + j
                    at, b = out_draw_offset[d] + out_offset[o], bias[o]
                    for vi in range(m):
                        out[at + out_vector_offset[v0 + vi]] = acc4[j, vi] + b
