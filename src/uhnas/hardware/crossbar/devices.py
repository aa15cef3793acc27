"""The resistive devices of a crossbar: weights to conductance pairs, and what the cells hold when read.

Mapping (weight-stationary): a weight matrix W (out x in; conv: its im2col matrix) is scaled per output column by
s_j = max_i |W_ji| (a digital output scale restored after the ADC), and each normalised weight w = W / s in [-1, 1]
is a differential pair of cells, G+ = g_max max(w, 0) and G- = g_max max(-w, 0) (one cell of a pair is at 0 S,
the single-pair convention of aihwkit's `SinglePairConductanceConverter`). With a finite number of conductance
levels the targets are rounded to them first.

Non-idealities, drawn for D chips at once (one Monte-Carlo draw = one programmed chip, read at `t_inference`):
- programming noise G + sigma(G) z, sigma a polynomial in G / g_max (PCM: Nandakumar et al., ICECS 2019;
  RRAM: a fit to Wan et al., Nature 2022, both as tabulated in IBM aihwkit), clipped at 0;
- device-to-device gain spread G (1 + d2d z) (RRAM);
- stuck-at-on (g_max) and stuck-at-off (0 S) faults at given rates, present from programming on;
- PCM drift G (t / t0)^-nu with nu ~ |N(mu(g), sd(g))| from the target conductance, t = t_inference + t0;
- PCM 1/f read noise accumulated up to t: G + |G| Q_s(g_prog) sqrt(ln((t + t_r) / (2 t_r))) z;
- additive Gaussian weight noise on the pair's difference (the generic knob of AnalogNAS-style studies);
- global drift compensation: a digital gain per layer and chip, mean |w_prog| / mean |w(t)|, the ratio a
  calibration read of the layer right after programming and at t_inference measures (Joshi et al. 2020; aihwkit's
  `GlobalDriftCompensation`, here on the cells' values rather than through the converters), applied after the ADC:
  the converters and the output noise see the drifted signal.
Every sample comes from the generator given, on the generator's device, in one call per kind (no loop over draws).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from uhnas.hardware.crossbar.params import CrossbarParams

ZERO_CLIP = 1e-7
"""Smallest normalised conductance used inside a logarithm or a power (as aihwkit's `_ZERO_CLIP`)."""

COMPENSATION_FLOOR = 1e-4
"""Smallest mean |w| a compensation read-out is divided by (a layer whose cells all drifted to ~0 is not blown up)."""


def column_scales(matrix: Tensor) -> Tensor:
    """Digital output scale per output column: max |W| of its row (1 where the row is all zero), shape (out,)."""
    scale = matrix.detach().abs().amax(-1)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def target_conductances(matrix: Tensor, p: CrossbarParams) -> Tensor:
    """Programming targets of the differential pairs in units of g_max: (2, out, in), G+ then G-, in [0, 1]."""
    normalised = matrix.detach() / column_scales(matrix)[:, None]
    targets = torch.stack([normalised.clamp(min=0), (-normalised).clamp(min=0)])
    if p.conductance_levels is not None:
        steps = p.conductance_levels - 1
        targets = torch.round(targets * steps) / steps
    return targets


def _normal(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal samples from the generator (on its device), moved to `like`'s device and dtype."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        like.device, like.dtype
    )


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) samples from the generator (on its device), moved to `like`'s device and dtype."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32).to(
        like.device, like.dtype
    )


def programming_sigma(g: Tensor, p: CrossbarParams) -> Tensor:
    """Programming-noise std in units of g_max at normalised target g: the preset polynomial, rescaled to g_max."""
    sigma = torch.zeros_like(g)
    power = torch.ones_like(g)
    for coefficient in p.prog_noise_coeff_us:
        sigma = sigma + coefficient * power
        power = power * g
    # the polynomial is in micro-siemens at the reference g_max; in units of g_max that is sigma / reference
    return (sigma / p.prog_noise_reference_g_max_us).clamp(min=0)


def drift_exponents(g: Tensor, shape: tuple[int, ...], p: CrossbarParams, generator: torch.Generator) -> Tensor:
    """nu per cell: |mu(g) + sd(g) z| x drift_scale, mu and sd linear in ln g and clipped (PCM fit)."""
    log_g = torch.log(g.clamp(min=ZERO_CLIP))
    mu = (p.drift_nu_mean[0] * log_g + p.drift_nu_mean[1]).clamp(*p.drift_nu_mean_clip)
    sd = (p.drift_nu_std[0] * log_g + p.drift_nu_std[1]).clamp(*p.drift_nu_std_clip)
    return (mu + sd * _normal(shape, generator, g)).abs() * p.drift_scale


def read_noise_sigma(g_prog: Tensor, p: CrossbarParams) -> Tensor:
    """Relative 1/f read-noise std accumulated up to t = t_inference + t0, from the programmed conductance."""
    t = p.t_inference + p.drift_t0_s
    q = (p.read_noise_q / g_prog.abs().clamp(min=1e-3) ** p.read_noise_q_exponent).clamp(max=p.read_noise_q_max)
    return p.read_noise_scale * q * math.sqrt(math.log((t + p.read_noise_t_read_s) / (2 * p.read_noise_t_read_s)))


def _apply_faults(g: Tensor, stuck_on: Tensor | None, stuck_off: Tensor | None) -> Tensor:
    """Stuck cells hold g_max (on) or 0 (off) whatever they were programmed to."""
    if stuck_on is not None:
        g = torch.where(stuck_on, torch.ones_like(g), g)
    if stuck_off is not None:
        g = torch.where(stuck_off, torch.zeros_like(g), g)
    return g


def sample_weights(matrix: Tensor, p: CrossbarParams, draws: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """What D programmed chips hold at t_inference, no grad: normalised weights (G+ - G-) / g_max, (D, out, in), and
    the digital drift-compensation gain, (D, 1, 1) (ones without compensation).

    Weights = normalised weights x gain x `column_scales(matrix)` per output; with every non-ideality off (and no
    conductance levels) the normalised weights are exactly matrix / column_scales(matrix) and the gain is 1.
    """
    with torch.no_grad():
        target = target_conductances(matrix, p).float()  # (2, out, in)
        shape = (draws, *target.shape)
        g = target.expand(shape)
        if p.prog_noise_scale > 0:
            g = (g + p.prog_noise_scale * programming_sigma(target, p) * _normal(shape, generator, target)).clamp(min=0)
        if p.d2d_std > 0:
            g = (g * (1 + p.d2d_std * _normal(shape, generator, target))).clamp(min=0)
        stuck_on = stuck_off = None
        if p.stuck_on_rate > 0 or p.stuck_off_rate > 0:
            u = _uniform(shape, generator, target)
            stuck_on = u < p.stuck_on_rate if p.stuck_on_rate > 0 else None
            stuck_off = (
                (u >= p.stuck_on_rate) & (u < p.stuck_on_rate + p.stuck_off_rate) if p.stuck_off_rate > 0 else None
            )
        programmed = _apply_faults(g, stuck_on, stuck_off)
        t = p.t_inference + p.drift_t0_s
        if p.drift_scale > 0 and t > p.drift_t0_s:
            g = g * (t / p.drift_t0_s) ** (-drift_exponents(target, shape, p, generator))
        if p.read_noise_scale > 0 and p.t_inference > 0:
            g = (g + g.abs() * read_noise_sigma(programmed, p) * _normal(shape, generator, target)).clamp(min=0)
        read = _apply_faults(g, stuck_on, stuck_off)
        weights = read[:, 0] - read[:, 1]
        if p.weight_noise > 0:
            weights = weights + p.weight_noise * _normal(weights.shape, generator, target)
        gain = torch.ones((draws, 1, 1), dtype=weights.dtype, device=weights.device)
        if p.drift_compensation:
            reference = (programmed[:, 0] - programmed[:, 1]).abs().mean((-2, -1), keepdim=True)
            gain = reference / weights.abs().mean((-2, -1), keepdim=True).clamp(min=COMPENSATION_FLOOR)
        return weights.to(matrix.dtype), gain.to(matrix.dtype)


__all__ = [
    "column_scales",
    "drift_exponents",
    "programming_sigma",
    "read_noise_sigma",
    "sample_weights",
    "target_conductances",
]
