"""Compiled (Numba) CPU Monte-Carlo forward of a realised MZI layer: DAC, blocks, detector noise, ADC, accumulation.

The model is `_Inference`'s (uhnas.hardware.mzi.backend): per draw d, input vector v and column tile c, the DAC
codes a = round(L_in x / s) of the tile's K inputs (s: their largest magnitude), the detected partial sums
y[o] = sum_k W[c, d, o, k] a[k] + sigma[c, o] z in ADC steps, the ADC's round and clamp, and the digital
accumulation out[o] += y[o] q[c, o] s, then the bias.  Here all of it is one loop nest over chunks of input
vectors (the vectorised axis, a compile-time length), so each partial sum is produced, made noisy, quantised and
accumulated while it is in a register, instead of in six passes over memory.

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
    y = np.empty(VECTORS, dtype=dtype)
    z = np.zeros(VECTORS, dtype=dtype)  # lanes past the last vector keep finite values
    acc = np.empty(VECTORS, dtype=dtype)
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
                            x = src[at + vector_offset[v0 + vi]]
                            cc[vi] = x
                            sc[vi] = max(sc[vi], abs(x))
                        for vi in range(m, VECTORS):
                            cc[vi] = 0
                    for kk in range(min(k, cols - c * k)):
                        cc = codes[c, kk]
                        if dac_levels > 0:
                            for vi in range(VECTORS):
                                cc[vi] = np.rint((cc[vi] / sc[vi]) * levels_in)  # |x / s| <= 1 exactly: no clamp
                        else:
                            for vi in range(VECTORS):
                                cc[vi] = cc[vi] / sc[vi]
            for o in range(outputs):
                for vi in range(VECTORS):
                    acc[vi] = 0
                for c in range(c_tiles):
                    w = weights[c, d, o]
                    cw = codes[c]
                    live = min(k, cols - c * k)  # the tile's real columns: zero padding would add exactly 0
                    for kk in range(0, live - 3, 4):  # four terms per pass over the chunk
                        w0, w1, w2, w3 = w[kk], w[kk + 1], w[kk + 2], w[kk + 3]
                        c0, c1, c2, c3 = cw[kk], cw[kk + 1], cw[kk + 2], cw[kk + 3]
                        if kk == 0:
                            for vi in range(VECTORS):
                                y[vi] = w0 * c0[vi] + w1 * c1[vi] + w2 * c2[vi] + w3 * c3[vi]
                        else:
                            for vi in range(VECTORS):
                                y[vi] += w0 * c0[vi] + w1 * c1[vi] + w2 * c2[vi] + w3 * c3[vi]
                    for kk in range(live - live % 4, live):
                        wk, ck = w[kk], cw[kk]
                        if kk == 0:
                            for vi in range(VECTORS):
                                y[vi] = wk * ck[vi]
                        else:
                            for vi in range(VECTORS):
                                y[vi] += wk * ck[vi]
                    unit = out_scale[c, o]
                    sc = scale[c]
                    if noisy:  # the noise is added in the ADC pass (a separate pass over y stayed scalar)
                        std = noise_std[c, o]
                        word = np.uint64((start + ((d * c_tiles + c) * outputs + o) * n4 + v0) // 4)
                        for q in range((m + 3) // 4):  # lanes past the last vector are never stored: no noise
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
                at, b = out_draw_offset[d] + out_offset[o], bias[o]
                for vi in range(m):
                    out[at + out_vector_offset[v0 + vi]] = acc[vi] + b
