"""Device non-idealities outside the meshes: attenuators (Sigma), input DACs, detectors and output ADCs.

Attenuator (one per singular value, a push-pull MZI, same couplers and heaters as the mesh MZIs):
    field = c1 c2 e^{i theta/2} - s1 s2 e^{-i theta/2},  c = sqrt(1-k), s = sqrt(k), k = power cross-coupling
          = (c1c2 - s1s2) cos(theta/2) + i (c1c2 + s1s2) sin(theta/2)
With 50:50 couplers this is i sin(theta/2): the transmission t = sigma/sigma_max is set by theta = 2 arcsin(t)
and the constant factor i is removed by the detection reference. The programmed theta is quantised to
`phase_bits` over [0, 2 pi), shifted by crosstalk gamma x (neighbouring attenuators' programmed phases), and
perturbed by Gaussian phase noise per draw; coupler ratios k ~ N(1/2, sigma_k) and the insertion loss
IL ~ N(IL_0, sigma_IL) dB are fixed per chip. The nominal loss IL_0 is calibrated out (only the spread stays),
exactly as for the meshes (conventions of `mesh.py`).

Input DAC: each input vector x of a column tile is scaled by its own max s = max_j |x_j| (digital, before the
DAC) and quantised to `dac_bits` over [-1, 1]: a = round(x/s * L)/L, L = 2^(b-1) - 1; the modulators encode a
on the field amplitudes, and s is multiplied back digitally after detection.

Detection (balanced homodyne against a reference of the full-scale received power, so the detector measures
the real field component and its shot noise does not depend on the signal; the energy model prices that
reference light):
    I_fs = R_resp * P_rx,  P_rx = `energy.detector_power_mw`     (the laser power the energy model buys: either
                                                                   the SimPhony 2^bits rule or, shot_noise rule,
                                                                   the power at which sigma_rel meets its target)
    sigma_I^2 = 2 q (I_fs + I_dark) df + 4 k_B T df / R_load,   df = clock / 2
    sigma_rel = sigma_I / I_fs
A full-amplitude input (a = 1) routed entirely to one detector gives I_fs; the noise is added to every detected
partial sum of the normalised block B~ a (B~ = block / sigma_max) as N(0, sigma_rel) in those units (per draw,
per tile output, per input vector).

Output ADC: the full scale of a tile is calibrated once, when its weights are programmed, to the largest
output the tile can produce for inputs within the DAC range: FS = max_i sum_j |B~_ij| (the largest row L1 norm,
<= sqrt(K)), so the ADC never clips on signal; detected values are quantised to `adc_bits` over [-FS, FS], then
multiplied digitally by sigma_max and s and accumulated over the column tiles.

Straight-through variants keep the forward value and pass gradients as identity (noise-aware training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from uhnas.hardware.counter_rng import fill_indices, seed_of
from uhnas.hardware.mzi.energy import (
    ELEMENTARY_CHARGE_C,
    W_PER_MW,
    detection_bandwidth_hz,
    detector_power_mw,
    thermal_noise_a2,
)
from uhnas.hardware.mzi.mesh import NOMINAL_SPLIT, TWO_PI, MeshNoise, _normal, sampled_coupler_ratios, sampled_losses
from uhnas.hardware.mzi.params import MZIParams
from uhnas.hardware.precision import quantize_symmetric, straight_through


def detector_relative_noise(p: MZIParams) -> float:
    """Std of shot + thermal noise relative to the full-scale photocurrent (0 when switched off)."""
    if not p.detector_noise:
        return 0.0
    current = p.responsivity_a_per_w * detector_power_mw(p) * W_PER_MW
    shot = 2.0 * ELEMENTARY_CHARGE_C * (current + p.dark_current_a) * detection_bandwidth_hz(p)
    return math.sqrt(shot + thermal_noise_a2(p)) / current


@dataclass(frozen=True)
class AttenuatorErrors:
    """Fabrication errors of attenuator columns, fixed per chip: (chips, ..., m, 2) ratios and (chips, ..., m) dB."""

    coupler_ratio: Tensor
    loss_db: Tensor


def sample_attenuators(
    shape: tuple[int, ...], noise: MeshNoise, generator: torch.Generator, chips: int
) -> AttenuatorErrors:
    """Coupler ratios and insertion losses of `chips` chips' attenuators laid out as `shape` (last dim: a column).

    As for the meshes (`mesh.sample_chip`): sampled values are float32 (their spread dwarfs float32 rounding),
    error-free values exact float64 nominals. Generator order: coupler normals (chips, *shape, 2), then loss
    normals (chips, *shape), each only when that error is on.
    """
    if noise.coupler_error_std > 0:
        z = _normal((chips, *shape, 2), generator, torch.float32)
        ratio = z.mul_(noise.coupler_error_std).add_(NOMINAL_SPLIT).clamp_(0.0, 1.0)
    else:
        ratio = torch.full((chips, *shape, 2), NOMINAL_SPLIT, dtype=torch.float64)
    if noise.loss_db_std > 0:
        z = _normal((chips, *shape), generator, torch.float32)
        loss = z.mul_(noise.loss_db_std).add_(noise.loss_db_per_mzi).clamp_min_(0.0)
    else:
        loss = torch.full((chips, *shape), float(noise.loss_db_per_mzi), dtype=torch.float64)
    return AttenuatorErrors(coupler_ratio=ratio, loss_db=loss)


def quantize_phase(phase: Tensor, bits: int | None) -> Tensor:
    """Programmed phase rounded to `bits` bits over [0, 2 pi) (None: exact)."""
    if bits is None:
        return phase
    step = TWO_PI / 2**bits
    return torch.round(phase / step) * step


def _programmed_attenuators(transmission: Tensor, noise: MeshNoise, dtype: torch.dtype) -> Tensor:
    """The attenuators' programmed phases theta = 2 arcsin(t), quantised and shifted by their neighbours' crosstalk."""
    theta = quantize_phase(2.0 * torch.arcsin(transmission.to(dtype).clamp(0.0, 1.0)), noise.phase_bits)
    if noise.crosstalk > 0:
        wrapped = torch.remainder(theta, TWO_PI)
        neighbours = torch.zeros_like(wrapped)
        neighbours[..., 1:] += wrapped[..., :-1]
        neighbours[..., :-1] += wrapped[..., 1:]
        theta = theta + noise.crosstalk * neighbours
    return theta


def attenuator_field(
    transmission: Tensor,
    noise: MeshNoise,
    errors: AttenuatorErrors,
    generator: torch.Generator,
    draws: int,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Complex field transmission of attenuator columns, (..., m) in [0, 1] -> (draws, ..., m), nominal loss removed.

    Computed in the real `dtype` (float32 gives complex64, float64 complex128). Phase noise: one float32 normal
    per draw and attenuator, (draws, ..., m), drawn after the fabrication errors.
    """
    theta = _programmed_attenuators(transmission, noise, dtype)
    theta = theta.expand(draws, *theta.shape)
    if noise.phase_std > 0:
        theta = theta + noise.phase_std * _normal(tuple(theta.shape), generator, dtype)
    ratio = errors.coupler_ratio.to(dtype)
    c = torch.sqrt(1.0 - ratio)
    s = torch.sqrt(ratio)
    cc = c[..., 0] * c[..., 1]
    ss = s[..., 0] * s[..., 1]
    half = theta / 2.0
    field = torch.complex((cc + ss) * torch.sin(half), -(cc - ss) * torch.cos(half))
    excess_db = errors.loss_db.to(dtype) - noise.loss_db_per_mzi
    return field * torch.pow(10.0, -excess_db / 20.0)


def sampled_attenuator_field(
    transmission: Tensor, noise: MeshNoise, generator: torch.Generator, draws: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """`attenuator_field` of `sample_attenuators`' chips (one per draw), from one compiled pass on the CPU
    (`block_kernel.attenuator_fields`): transmission (T, K) -> (draws, T, K). The same random samples, drawn from
    ``generator`` in the same order, so it equals the two calls to float rounding."""
    from uhnas.hardware.mzi.block_kernel import attenuator_fields  # compiled on first use (Numba)
    from uhnas.hardware.mzi.mesh_kernel import noise_rotations

    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    count = draws * transmission.numel()

    def indices(on: bool, per_element: int = 1) -> np.ndarray:
        out = np.empty(count * per_element if on else 0, dtype=np.uint16)
        if on:
            fill_indices(seed_of(generator, 1)[0], np.int64(0), out)
        return out

    coupler, loss, phase = (
        indices(noise.coupler_error_std > 0, 2),
        indices(noise.loss_db_std > 0),
        indices(noise.phase_std > 0),
    )
    half = (_programmed_attenuators(transmission, noise, dtype) / 2).reshape(-1)
    rot = noise_rotations(noise.phase_std / 2, np_dtype) if phase.size else np.zeros((1, 2), np_dtype)
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    out = torch.empty((draws, *transmission.shape), dtype=complex_dtype)
    ratios = sampled_coupler_ratios(noise.coupler_error_std, np_dtype)
    attenuator_fields(
        torch.cos(half).numpy(),
        torch.sin(half).numpy(),
        coupler,
        ratios,
        loss,
        _excess_loss_amplitudes(noise.loss_db_per_mzi, noise.loss_db_std, np_dtype),
        phase,
        rot,
        torch.view_as_real(out).view(draws, -1, 2).numpy(),
    )
    return out


@lru_cache(maxsize=8)
def _excess_loss_amplitudes(mean_db: float, std_db: float, dtype: type) -> np.ndarray:
    """(2^16,) field amplitude 10^(-(IL - IL_0) / 20) of the loss spread, for each loss IL of `mesh.sampled_losses`
    (the nominal loss IL_0 is calibrated out, as in `attenuator_field`)."""
    excess = sampled_losses(mean_db, std_db).astype(dtype) - dtype(mean_db)
    return (10.0 ** (-excess / 20.0)).astype(dtype)


def dac(a: Tensor, bits: int | None, *, train: bool) -> Tensor:
    """Normalised inputs (|a| <= 1) quantised to `bits` over [-1, 1]; straight-through when training, else in place."""
    if bits is None:
        return a
    if train:
        return straight_through(a, quantize_symmetric(a.detach(), bits, 1.0))
    levels = 2 ** (bits - 1) - 1
    return a.mul_(levels).round_().clamp_(-levels, levels).div_(levels)


def detect(y: Tensor, sigma: float, generator: torch.Generator | None, *, train: bool) -> Tensor:
    """Detected partial sums: y + N(0, sigma) in units of the full-scale photocurrent (in place when not training).

    `generator` must live on y's device; None draws from torch's global generator of that device.
    """
    if sigma == 0:
        return y
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return y + sigma * noise if train else y.add_(noise, alpha=sigma)


def adc(y: Tensor, bits: int | None, full_scale: Tensor, *, train: bool) -> Tensor:
    """Detected values quantised to `bits` over [-full_scale, full_scale] (broadcast); in place when not training."""
    if bits is None:
        return y
    levels = 2 ** (bits - 1) - 1
    step = full_scale.clamp_min(torch.finfo(y.dtype).tiny) / levels
    if train:
        quantized = torch.clamp(torch.round(y.detach() / step), -levels, levels) * step
        return straight_through(y, quantized)
    return y.div_(step).round_().clamp_(-levels, levels).mul_(step)
