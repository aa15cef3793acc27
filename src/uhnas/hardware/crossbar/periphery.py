"""The periphery around the cells: input DACs, the analog dot product, output noise, ADCs, digital accumulation.

One layer's matrix-vector products as the chip computes them, for D chips at once. The input vector is cut into
row tiles of `tile_rows`; each tile scales its slice by its absolute maximum (aihwkit's abs-max noise management:
the DAC's full scale follows the input), converts it to `dac_bits`, and its bit lines sum the currents
u . w (u the DAC codes in [-1, 1], w the normalised weights (G+ - G-) / g_max): y is in units of one g_max cell read
at full-scale input. Additive Gaussian output noise (sigma `output_noise` in those units, fresh every read) and an
ADC (clipped to +-`adc_range`, `adc_bits` over that range) follow; digitally every partial sum is multiplied by its
input scale and the column's output scale and accumulated over row tiles. Output column tiles change no arithmetic
(every column is read on its own), only the counts in `energy`.

`tiled_forward` is both the Monte-Carlo reference (no autograd) and, with train=True, the differentiable
noise-aware training forward (straight-through converters).
"""

from __future__ import annotations

import torch
from torch import Tensor

from uhnas.hardware.crossbar.params import CrossbarParams
from uhnas.hardware.precision import straight_through


def levels(bits: int) -> int:
    """Codes per sign of a signed quantiser of `bits` bits: 2^(bits-1) - 1 (symmetric, zero exact)."""
    return 2 ** (bits - 1) - 1


def _quantise(x: Tensor, step: float | Tensor, train: bool) -> Tensor:
    """Round x to multiples of step (straight-through when training)."""
    q = torch.round(x / step) * step
    return straight_through(x, q) if train else q


def dac(u: Tensor, bits: int | None, *, train: bool) -> Tensor:
    """Input codes: u in [-1, 1] rounded to 2^(bits-1) - 1 levels per sign (identity for an ideal DAC)."""
    if bits is None:
        return u
    return _quantise(u, 1.0 / levels(bits), train)


def adc(y: Tensor, p: CrossbarParams, rows: int, *, train: bool) -> Tensor:
    """Output codes: clipped to +-adc_range (if set), rounded to adc_bits over that range (or over +-rows cells)."""
    if p.adc_range is not None:
        y = y.clamp(-p.adc_range, p.adc_range)
    if p.adc_bits is None:
        return y
    full_scale = p.adc_range if p.adc_range is not None else float(rows)
    return _quantise(y, full_scale / levels(p.adc_bits), train)


def tiled_forward(
    rows: Tensor,
    weights: Tensor,
    scales: Tensor,
    p: CrossbarParams,
    generator: torch.Generator | None,
    *,
    train: bool = False,
) -> Tensor:
    """rows (D, n, in) through normalised weights (D or 1, out, in) and digital output scales (broadcastable to
    (D, 1, out): column scale x drift-compensation gain) -> (D, n, out), no bias.

    `generator` draws the output noise (on its own device; None: no output noise, e.g. a CPU generator for
    CUDA rows during training).
    """
    n_in = rows.shape[-1]
    out = None
    tiny = torch.finfo(rows.dtype).tiny
    for start in range(0, n_in, p.tile_rows):
        stop = min(n_in, start + p.tile_rows)
        x = rows[..., start:stop]
        scale = x.detach().abs().amax(-1, keepdim=True).clamp(min=tiny)  # per vector and row tile: DAC full scale
        u = dac(x / scale, p.dac_bits, train=train)
        y = torch.matmul(u, weights[..., start:stop].transpose(-1, -2))  # (D, n, out): bit-line sums, g_max units
        if p.output_noise > 0 and generator is not None:
            noise = torch.randn(y.shape, generator=generator, device=generator.device, dtype=torch.float32)
            y = y + p.output_noise * noise.to(y.device, y.dtype)
        y = adc(y, p, stop - start, train=train) * scale
        out = y if out is None else out + y
    assert out is not None
    return out * scales


__all__ = ["adc", "dac", "levels", "tiled_forward"]
