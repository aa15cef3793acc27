"""MZI-mesh backend: constraints, energy and the network as the chip computes it (constants: `params.MZIParams`).

Mapping: a weight matrix W (out x in; conv: its im2col matrix) is cut into K x K blocks (zero-padded edges);
each block B = U diag(s) V^T (SVD, float64) is programmed as two Clements meshes (U and V^T, decomposed once
per weight value and cached) and a column of K attenuators with transmissions s / s_max; s_max is restored
electronically. For D Monte-Carlo draws (one chip per draw: coupler and loss errors fixed per chip, phase
noise per draw, crosstalk and phase quantisation systematic) the block the device applies is

    B_d = s_max * Re(U_d diag(a_d) V_d) / tau,   tau = 10^(-(depth_U + depth_V) * IL_0 / 20)

(coherent detection reads the real field component; the nominal loss IL_0 is calibrated out, its spread is
not); with every non-ideality off B_d = B exactly. Inputs go through per-vector scaled DACs, every block's
partial sums through detector noise and an ADC (see `noise`), then are rescaled and accumulated digitally with
the bias. Energy, resources and constraints: `energy`.

Simulation, two things chosen explicitly by the preset's `simulator` (`MZIBackend.uses_accelerator`):
- the reference model (torch ops, any device; the specification): the realised blocks from `mesh_matrices`'s
  reference builder and `noise.attenuator_field` (`_noisy_blocks`), and the differentiable `_tiled_forward`
  (DAC, blocks, detector noise, ADC, digital accumulation; straight-through converters when training);
- the compiled CPU accelerator (Numba): `_compiled_inference` builds the same blocks from the same random draws
  (`block_kernel` applies U's gates to diag(a) V in the lanes) in the layout of `_Inference`, and
  `_compiled_forward` (`forward_kernel`) runs DAC codes times blocks pre-divided by the ADC step, detector noise
  from a counter-based stream and ADC rounding in ADC steps, in one cache-resident loop nest.
The conformance kit (`uhnas.hardware.testing.check_accelerator`) checks the accelerator against the reference:
exactly without noise, statistically with it. A layer's 2T meshes are decomposed in one batched call
(`clements_decompose_many`); the mapping is cached per weight tensor. Noise-aware training always uses
`_tiled_forward`, with hardware errors W_hw - W from a pool of blocks made by whichever simulator applies.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from uhnas.arch import ArchSummary
from uhnas.arch.build import MatMul, Network, Program
from uhnas.errors import BackendError
from uhnas.hardware.base import RealizedModel
from uhnas.hardware.card import BackendCard, EnergyReport, Violation
from uhnas.hardware.mzi import energy
from uhnas.hardware.mzi.mesh import MeshNoise, MeshStack, clements_decompose_many, compiled_inputs, mesh_matrices
from uhnas.hardware.mzi.noise import (
    adc,
    attenuator_field,
    dac,
    detect,
    detector_relative_noise,
    sample_attenuators,
    sampled_attenuator_field,
)
from uhnas.hardware.mzi.params import MZIParams
from uhnas.hardware.registry import BackendFamily, Preset, validate_params
from uhnas.hardware.sampling import quantile_table

TRAINING_POOL_DRAWS = 64
"""Simulation choice (not hardware): noise-aware training draws up to this many chips at once and uses one per
step, re-mapping the current weights (SVD, Clements, new chips and phase noise) when the pool is used up. A mesh
rebuild costs nearly the same for 1 or 64 draws, so larger pools amortise the mapping over more steps."""

TRAINING_POOL_VALUES = 1 << 24
"""Simulation choice (not hardware): a layer's pool holds at most this many error values (64 MiB in float32)."""

ROWS_PER_CHUNK_ELEMENTS = 1 << 23
"""Simulation choice (not hardware): partial-sum tensors are processed in row chunks of at most this many values."""


@dataclass(frozen=True)
class _Mapped:
    """A weight matrix mapped onto K x K SVD blocks: everything the chip is programmed with."""

    rows: int
    cols: int
    row_tiles: int
    col_tiles: int
    meshes: MeshStack  # 2T Clements meshes: U of every block (row-major (r, c) order), then V^T of every block
    transmission: Tensor  # (T, K) attenuator settings s / s_max, float64
    sigma_max: Tensor  # (R, C) largest singular value per block (restored electronically), float64
    full_scale: Tensor  # (R, C) largest row L1 norm of each block: ADC full scale per unit input scale, float64

    @property
    def tiles(self) -> int:
        """T = R * C blocks."""
        return self.row_tiles * self.col_tiles


def _map_matrix(weight: Tensor, mesh_size: int) -> _Mapped:
    """Tile, SVD and Clements-decompose a weight matrix (out x in), in float64 (all blocks at once)."""
    rows, cols = weight.shape
    k = mesh_size
    r_tiles, c_tiles = -(-rows // k), -(-cols // k)
    padded = torch.zeros(r_tiles * k, c_tiles * k, dtype=torch.float64)
    padded[:rows, :cols] = weight.detach().to("cpu", torch.float64)
    blocks = padded.reshape(r_tiles, k, c_tiles, k).permute(0, 2, 1, 3)  # (R, C, K, K)
    u, s, vh = torch.linalg.svd(blocks.reshape(-1, k, k))
    sigma_max = s[:, 0]
    safe = torch.where(sigma_max > 0, sigma_max, torch.ones_like(sigma_max))
    return _Mapped(
        rows=rows,
        cols=cols,
        row_tiles=r_tiles,
        col_tiles=c_tiles,
        meshes=clements_decompose_many(torch.cat([u, vh])),  # all U, then all V^T, in one vectorised pass
        transmission=s / safe[:, None],
        sigma_max=sigma_max.reshape(r_tiles, c_tiles),
        full_scale=blocks.abs().sum(-1).amax(-1),
    )


class MZIBackend:
    """A coherent MZI-mesh accelerator: SVD blocks on Clements meshes, converters, detectors, digital periphery."""

    def __init__(self, preset: Preset, *, dtype: torch.dtype = torch.complex64) -> None:
        self.preset = preset
        self.name = preset.name
        self.params: MZIParams = validate_params(MZIParams, preset)
        self.dtype = dtype  # complex dtype of the simulated meshes; complex128 for double-precision studies
        self.real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64  # ... and of the blocks
        p = self.params
        self.mesh_noise = MeshNoise(
            phase_std=p.phase_noise_std,
            phase_bits=p.phase_bits,
            crosstalk=p.crosstalk,
            loss_db_per_mzi=p.loss_db_per_mzi,
            loss_db_std=p.loss_db_std,
            coupler_error_std=p.coupler_error_std,
        )
        self.detector_sigma = detector_relative_noise(p)
        self._cache: dict[int, tuple[weakref.ref[Tensor], Tensor, _Mapped]] = {}  # id(weight) -> (ref, copy, mapping)
        self._pools: dict[int, tuple[weakref.ref[Tensor], _TrainingPool]] = {}  # id(weight) -> training pool

    # ------------------------------------------------------------------ protocol
    def describe(self) -> BackendCard:
        """Card: precision, modelled effects and energy components, constants with sources."""
        p = self.params
        bits_in = "exact" if p.dac_bits is None else f"{p.dac_bits}-bit"
        bits_out = "exact" if p.adc_bits is None else f"{p.adc_bits}-bit"
        return BackendCard(
            name=self.name,
            family="mzi",
            precision=f"analog optical, {bits_in} DAC inputs, {bits_out} ADC outputs, K={p.mesh_size} meshes",
            description=self.preset.description,
            models=(
                f"SVD mapping on {p.mesh_size}x{p.mesh_size} Clements meshes, "
                + (
                    f"time-multiplexed over {p.cores} cores (tiles reprogrammed once per batch of {p.batch})"
                    if p.mapping == "time_multiplexed"
                    else "weight-stationary (every tile its own meshes)"
                )
                + "; partial sums detected per tile",
                "phase noise per shifter (per draw)",
                "phase quantisation",
                "nearest-neighbour thermal crosstalk (uncalibrated)",
                "insertion-loss spread per MZI (per chip; nominal loss calibrated out)",
                "coupler splitting-ratio error (per chip)",
                "attenuator (Sigma) errors: quantisation, noise, crosstalk, couplers, loss",
                "coherent detection: real field component",
                "detector shot + thermal noise from the received laser power",
                "DAC and ADC quantisation",
                f"energy: laser ({p.detector_power_rule} rule, gating {p.laser_gating}), reference light for coherent "
                f"detection, DAC, modulators, ADC, TIAs, {p.phase_shifter} phase-shifter holding and reprogramming, "
                f"digital periphery and SRAM at {p.technology_node_nm:g} nm",
                "constraints: mesh size, path loss budget, phase precision, MZIs and phase shifters on the chip, "
                "optical power budget, chip power budget",
            ),
            constants=self.preset.card_constants(),
        )

    def check(self, summary: ArchSummary) -> list[Violation]:
        """Limits broken (a null limit is unlimited), each named by its preset key and measured in its unit.

        max_mesh_size: mesh_size against the largest mesh the chip provides (modes); max_path_loss_db: insertion
        loss of one SVD block's light path, (2K+1) x IL_MZI + coupling, as the laser model prices it (dB);
        max_phase_bits: phase_bits asked of the phase drivers (bits; null phase_bits, the exact-phase simulation
        switch, is not checked); max_mzis and max_phase_shifters: MZIs and phase shifters on the chip (counts);
        max_optical_power_mw: optical laser power, signal and reference light, with the whole chip lit (mW);
        max_chip_power_w: the photonic chip's electrical power at full rate: heaters, lasers, converters, TIAs (W).
        Weight-stationary, the chip holds every tile of the network; time-multiplexed, it has `cores` blocks
        whatever the network, so every limit is a property of the chip and the preset (`energy.chip_tiles`).
        """
        p = self.params
        measured = (
            ("max_mesh_size", p.max_mesh_size, p.mesh_size, "modes"),
            ("max_path_loss_db", p.max_path_loss_db, energy.path_loss_db(p), "dB"),
            ("max_phase_bits", p.max_phase_bits, p.phase_bits, "bits"),
            ("max_mzis", p.max_mzis, energy.total_mzis(summary, p), "MZIs"),
            ("max_phase_shifters", p.max_phase_shifters, energy.total_shifters(summary, p), "phase shifters"),
            ("max_optical_power_mw", p.max_optical_power_mw, energy.total_optical_power_mw(summary, p), "mW"),
            ("max_chip_power_w", p.max_chip_power_w, energy.chip_power_w(summary, p), "W"),
        )
        return [
            Violation(key, float(limit), float(actual), unit)
            for key, limit, actual, unit in measured
            if limit is not None and actual is not None and actual > limit
        ]

    def energy(self, summary: ArchSummary) -> EnergyReport:
        """Energy per inference by component (see `uhnas.hardware.mzi.energy`)."""
        return energy.energy_report(summary, self.params)

    def realize(self, model: Network, draws: int, generator: torch.Generator) -> RealizedModel:
        """The network as `draws` chips compute it: every block rebuilt from D mesh realisations at once."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        programs: dict[int, Program] = {}
        with torch.no_grad():
            for layer in model.matmuls():
                mapped = self._mapped(layer)
                if self.uses_accelerator(layer.weight.device):
                    fixed = self._compiled_inference(mapped, draws, generator)
                    seed = int(torch.randint(0, 2**62, (1,), generator=generator))  # detector noise at forward time
                    programs[layer.index] = self._program(layer, fixed, seed)
                else:
                    blocks = self._noisy_blocks(mapped, draws, generator, layer.weight.device)
                    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
                    programs[layer.index] = self._reference_program(layer, blocks, mapped, seed)
        return RealizedModel(model, programs, draws)

    def uses_accelerator(self, device: torch.device) -> bool:
        """Whether a model on `device` is simulated by the compiled CPU accelerator (else: the torch reference).

        The preset's `simulator`: compiled (CPU only: a model elsewhere is an error), reference (any device), auto
        (compiled on a CPU, reference elsewhere). Both compute the same model from the same random draws, except the
        detector noise (counter-based stream / torch's generator): checked by `uhnas.hardware.testing`.
        """
        mode = self.params.simulator
        if mode == "compiled" and device.type != "cpu":
            raise BackendError(f"backend {self.name!r}: simulator=compiled runs on the CPU; the model is on {device}")
        return mode == "compiled" or (mode == "auto" and device.type == "cpu")

    def training_programs(self, model: Network, generator: torch.Generator) -> dict[int, Program] | None:
        """One-draw differentiable programs: W + (W_hw - W).detach(), straight-through converters, detector noise.

        W_hw comes from a pool of up to TRAINING_POOL_DRAWS chips mapped from the weights when it was drawn; the
        pool lives in the backend (per weight tensor), so calling this every step costs one mapping per pool.
        """
        return {layer.index: _training_program(self, layer, generator) for layer in model.matmuls()}

    # ------------------------------------------------------------------ device simulation
    def _mapped(self, layer: MatMul) -> _Mapped:
        """The layer's SVD/Clements mapping, cached per weight tensor and recomputed when its values change.

        Values are compared, not version counters: fused optimizer kernels update weights without bumping them.
        """
        weight = layer.weight
        matrix = layer.matrix().detach()
        hit = self._cache.get(id(weight))
        if hit is not None and hit[0]() is weight and torch.equal(hit[1], matrix):
            return hit[2]
        mapped = _map_matrix(matrix, self.params.mesh_size)
        self._cache = {key: entry for key, entry in self._cache.items() if entry[0]() is not None}
        self._cache[id(weight)] = (weakref.ref(weight), matrix.clone(), mapped)
        return mapped

    def _noisy_blocks(
        self, mapped: _Mapped, draws: int, generator: torch.Generator, device: torch.device | None = None
    ) -> Tensor:
        """The reference model's normalised blocks as `draws` chips realise them, (D, R, C, K, K):
        Re(U_d diag(a_d) V_d) / tau, built by torch ops on `device` (default: the CPU)."""
        return _block_product(*self._realised(mapped, draws, generator, device), mapped)

    def _realised(
        self, mapped: _Mapped, draws: int, generator: torch.Generator, device: torch.device | None = None
    ) -> tuple[Tensor, Tensor, float]:
        """What `draws` chips make of a layer's blocks: the 2T realised meshes (2T, D, K, K) (every U, then every V),
        the attenuator fields (D, T, K) and the nominal loss tau they carry, in ``self.dtype``.

        All 2T meshes are built in one `mesh_matrices` call. Generator order: the meshes' chips, their phase errors
        (see `mesh_matrices`), then the attenuators' chips and phase errors.
        """
        k, noise, tiles = self.params.mesh_size, self.mesh_noise, mapped.tiles
        mats = mesh_matrices(
            mapped.meshes,
            draws=draws,
            noise=noise,
            generator=generator,
            dtype=self.dtype,
            device=device,
            builder="reference",
        )
        errors = sample_attenuators((tiles, k), noise, generator, chips=draws)
        field = attenuator_field(mapped.transmission, noise, errors, generator, draws, dtype=self.real_dtype)
        return mats, field.to(mats.device), self._nominal_loss(mapped)

    def _nominal_loss(self, mapped: _Mapped) -> float:
        """tau: the field transmission of a block's nominal path loss (calibrated out)."""
        return 10.0 ** (-2 * mapped.meshes.depth * self.mesh_noise.loss_db_per_mzi / 20.0)

    def _compiled_inference(self, mapped: _Mapped, draws: int, generator: torch.Generator) -> _Inference:
        """`_Inference.build` of `_noisy_blocks` on a CPU, from compiled code and the same random draws
        (`_compiled_blocks`)."""
        inv, noise_std, out_scale, dac_levels, adc_levels = _inference_constants(
            mapped, self.params, self.detector_sigma, self.params.mesh_size, self.real_dtype
        )
        weights = self._compiled_blocks(mapped, draws, generator, inv / self._nominal_loss(mapped))
        return _Inference(weights, noise_std, out_scale, dac_levels, adc_levels, self.detector_sigma > 0)

    def _compiled_blocks(self, mapped: _Mapped, draws: int, generator: torch.Generator, scale: np.ndarray) -> Tensor:
        """scale[r, c] x Re(U_d diag(a_d) V_d) of every block (r, c) and draw d as (C, D, out, K) (the forward's
        layout), on a CPU from compiled code and the random draws of `_realised`: the meshes' inputs
        (`mesh.compiled_inputs`), the attenuator fields in one pass (`noise.sampled_attenuator_field`), then either
        the fused builder (`block_kernel.build_blocks`: U applied to diag(a) V in the lanes, no matrix stored) or,
        where the small-mesh layout does not apply or nothing differs between draws, the built meshes times the
        fields (`block_kernel.real_blocks`)."""
        from uhnas.hardware.mzi.block_kernel import build_blocks, real_blocks  # compiled on first use (Numba)
        from uhnas.hardware.mzi.mesh_kernel import build_meshes, uses_lanes

        k, noise, tiles = self.params.mesh_size, self.mesh_noise, mapped.tiles
        args, per_mesh = compiled_inputs(mapped.meshes, draws, True, noise, None, generator, self.dtype)
        real = self.real_dtype
        field = sampled_attenuator_field(mapped.transmission, noise, generator, draws, dtype=real).numpy()
        weights = torch.empty((mapped.col_tiles, draws, mapped.rows, k), dtype=real)
        if per_mesh == draws and uses_lanes(k, tiles * draws):
            build_blocks(*args, field, scale, mapped.col_tiles, weights.numpy())
        else:
            mats = torch.empty((2 * tiles, per_mesh, k, k), dtype=self.dtype)
            build_meshes(mats.numpy(), *args)
            real_blocks(
                mats.expand(2 * tiles, draws, k, k).contiguous().numpy(),
                field,
                scale,
                mapped.col_tiles,
                weights.numpy(),
            )
        return weights

    def _program(self, layer: MatMul, fixed: _Inference, seed: int) -> Program:
        """rows (draws, n, in) -> (draws, n, out) through a realised layer; detector noise seeded by `seed`.

        Takes conv windows too (``takes_windows``, see `uhnas.arch.build.Program`): (draws, B, h, w, C, k, k) views
        of the padded activations -> (draws, B, out, h, w).
        """
        bias = None if layer.bias is None else layer.bias.detach()
        forward = _compiled_forward(fixed, seed, bias)

        def run(rows: Tensor) -> Tensor:
            if rows.device.type != "cpu":
                raise BackendError(f"the compiled MZI accelerator runs on the CPU; inputs are on {rows.device}")
            with torch.no_grad():
                out = forward(rows.detach())
            return out.to(rows.dtype)

        run.takes_windows = True  # type: ignore[attr-defined]
        return run

    def _reference_program(self, layer: MatMul, blocks: Tensor, mapped: _Mapped, seed: int) -> Program:
        """rows (draws, n, in) -> (draws, n, out) through the reference model (`_tiled_forward`: DAC, the realised
        blocks, detector noise from torch's generator of the rows' device seeded with `seed`, ADC, digital
        accumulation) plus the bias; takes conv windows too (unfolded into rows)."""
        weights = _layout(blocks.contiguous())  # (D, C, K, R*K)
        bias = None if layer.bias is None else layer.bias.detach()
        p, sigma = self.params, self.detector_sigma
        per_device: dict[torch.device, tuple[Tensor, torch.Generator]] = {}  # blocks and noise source per device

        def forward(rows: Tensor) -> Tensor:
            device = rows.device
            if device not in per_device:
                per_device[device] = (weights.to(device), torch.Generator(device=device).manual_seed(seed))
            w, generator = per_device[device]
            return _tiled_forward(rows, w.expand(rows.shape[0], *w.shape[1:]), mapped, p, sigma, generator, train=False)

        wrapped = _taking_windows(forward, bias)

        def run(rows: Tensor) -> Tensor:
            with torch.no_grad():
                out = wrapped(rows.detach())
            return out.to(rows.dtype)

        run.takes_windows = True  # type: ignore[attr-defined]
        return run


def _block_product(mats: Tensor, field: Tensor, nominal: float, mapped: _Mapped) -> Tensor:
    """Normalised blocks (D, R, C, K, K) Re(U diag(a) V) / tau from `MZIBackend._realised`'s parts, in torch ops."""
    tiles, draws, k, _ = mats.shape
    tiles //= 2
    u, v = mats[:tiles], mats[tiles:]  # (T, D, K, K)
    block = torch.matmul(u * field.transpose(0, 1)[:, :, None, :], v).real.div_(nominal)  # (T, D, K, K)
    return block.view(mapped.row_tiles, mapped.col_tiles, draws, k, k).permute(2, 0, 1, 3, 4)


WINDOW_DIMS = 7
"""Rank of the conv windows a program takes: (draws, B, h, w, C, k, k) (see `uhnas.arch.build.Program`)."""


def _taking_windows(forward: Callable[[Tensor], Tensor], bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """A rows forward (draws, n, in) -> (draws, n, out), with ``bias`` added, that also takes conv windows
    (draws, B, h, w, C, k, k) -> (draws, B, out, h, w), by unfolding them into rows (one copy; the compiled CPU
    forward reads them in place)."""

    def run(rows: Tensor) -> Tensor:
        if rows.dim() == WINDOW_DIMS:
            draws, images, h, w = rows.shape[:4]
            shared = draws > 1 and rows.stride(0) == 0
            flat = (rows[:1] if shared else rows).reshape(1 if shared else draws, images * h * w, -1)
            out = forward(flat.expand(draws, -1, -1))  # vectors ordered (image, y, x)
            out = out.reshape(draws, images, h, w, -1).permute(0, 1, 4, 2, 3).contiguous()
        else:
            out = forward(rows)
        if bias is not None:
            b = bias.to(out.device, out.dtype)
            out.add_(b[:, None, None] if rows.dim() == WINDOW_DIMS else b)
        return out

    return run


def _offsets(sizes: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """Element offsets of every index of a strided block, row-major over ``sizes`` (int64)."""
    offsets = np.zeros(1, dtype=np.int64)
    for size, stride in zip(sizes, strides, strict=True):
        offsets = (offsets[:, None] + np.arange(size, dtype=np.int64) * stride).reshape(-1)
    return offsets


def _storage(t: Tensor) -> np.ndarray:
    """The memory a strided CPU tensor spans, from its first element, as a flat numpy array (shared, not copied)."""
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.as_strided((extent,), (1,)).numpy()


def _compiled_forward(layer: _Inference, seed: int, bias: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The Monte-Carlo forward of a realised layer on a CPU from the compiled kernel (`forward_kernel`): the model
    of `_inference_forward` plus ``bias``, detector noise from the counter-based stream ``seed``, continued from
    call to call.

    Takes rows (draws, n, in) -> (draws, n, out) or conv windows (draws, B, h, w, C, k, k) -> (draws, B, out, h, w),
    any strides, read in place; a stride-0 draw axis (the same inputs for every draw) is converted once.
    """
    from uhnas.hardware.mzi.forward_kernel import forward_layer, samples_used  # compiled on first use (Numba)

    c_tiles, draws, outputs, _ = layer.weights.shape
    dtype = layer.weights.dtype
    weights = layer.weights.contiguous().numpy()
    noise_std = layer.noise_std[..., 0].contiguous().numpy()
    out_scale = layer.out_scale[..., 0].contiguous().numpy()
    table = quantile_table(dtype).numpy()
    offset = np.zeros(outputs, dtype=weights.dtype) if bias is None else bias.to("cpu", dtype).contiguous().numpy()
    position = 0

    def run(rows: Tensor) -> Tensor:
        nonlocal position
        if rows.shape[0] != draws:
            raise ValueError(f"expected rows for {draws} draws, got shape {tuple(rows.shape)}")
        windows = rows.dim() == WINDOW_DIMS
        shared = draws > 1 and rows.stride(0) == 0  # the same inputs for every draw: DAC them once
        x = rows[:1] if shared else rows
        if x.dtype != dtype:
            x = x.to(dtype)
        split = 4 if windows else 2  # vector dims x.shape[1:split], column dims x.shape[split:]
        vectors = x.shape[1:split]
        if windows:
            result = torch.empty((draws, vectors[0], outputs, *vectors[1:]), dtype=dtype)
            out_vectors = (result.stride(1), *result.stride()[3:])
        else:
            result = torch.empty((draws, *vectors, outputs), dtype=dtype)
            out_vectors = result.stride()[1:2]
        if result.numel() == 0:
            return result
        forward_layer(
            _storage(x),
            _offsets(x.shape[:1], x.stride()[:1]),
            _offsets(vectors, x.stride()[1:split]),
            _offsets(x.shape[split:], x.stride()[split:]),
            weights,
            noise_std,
            out_scale,
            layer.dac_levels or 0,
            layer.adc_levels or 0,
            layer.noisy,
            np.uint64(seed),
            np.int64(position),
            table,
            offset,
            result.view(-1).numpy(),
            _offsets((draws,), result.stride()[:1]),
            _offsets(vectors, out_vectors),
            _offsets((outputs,), (result.stride(2 if windows else -1),)),
        )
        position += samples_used(draws, c_tiles, outputs, math.prod(vectors))
        return result

    return run


def _per_column(x: np.ndarray, k: int, rows: int, dtype: torch.dtype) -> Tensor:
    """(R, C) per block -> (C, rows, 1) per detected column (c, r K + i), i.e. per column tile and output."""
    return torch.from_numpy(np.ascontiguousarray(np.repeat(x.T, k, axis=-1)[:, :rows, None])).to(dtype)


def _inference_constants(
    mapped: _Mapped, p: MZIParams, sigma: float, k: int, dtype: torch.dtype
) -> tuple[np.ndarray, Tensor, Tensor, int | None, int | None]:
    """`_Inference`'s per-block weight factor 1 / (L_in q) (R, C) (float64 numpy; 0 for an all-zero block), its
    noise_std and out_scale, and the DAC and ADC levels. (In numpy: a dozen small torch ops cost ~0.25 ms per layer.)"""
    gain = mapped.sigma_max.numpy()  # (R, C)
    live = gain > 0  # an all-zero block contributes exactly 0 (its noise and ADC output are multiplied by 0)
    safe = np.where(live, gain, 1.0)
    dac_levels = None if p.dac_bits is None else 2 ** (p.dac_bits - 1) - 1
    adc_levels = None if p.adc_bits is None else 2 ** (p.adc_bits - 1) - 1
    if adc_levels is None:
        step = np.ones_like(gain)
    else:
        step = np.maximum(mapped.full_scale.numpy() / safe, torch.finfo(dtype).tiny) / adc_levels
    inv = np.where(live, 1.0 / (step * (dac_levels or 1)), 0.0)
    noise_std = np.where(live, sigma / step, 0.0)
    rows = mapped.rows
    return inv, _per_column(noise_std, k, rows, dtype), _per_column(step * gain, k, rows, dtype), dac_levels, adc_levels


@dataclass(frozen=True)
class _Inference:
    """A realised layer's constants for the Monte-Carlo forward, with DAC, ADC and detector noise folded in.

    With L_in = 2^(b_dac-1) - 1 DAC levels (1 without a DAC) and the ADC step q = FS / L_out of each detected
    column (1 without an ADC), the chip's partial sum of column tile c, output o, is
        y = sum_k B~[o, k] a[k] + sigma z,  a = round(x L_in / s) / L_in,  z ~ N(0, 1),
    and the digital side adds  round(clamp(y / q)) q g s  (g = sigma_max). Here the integer DAC codes
    a_int = a L_in meet `weights` = B~ / (L_in q), so  y / q = weights . a_int + (sigma / q) z:  the same numbers in
    ADC units, without a separate DAC rescale or ADC division pass. Padded output rows (beyond the layer's
    outputs) are dropped before detection: they are never read, so their noise need not be drawn.
    """

    weights: Tensor  # (C, D, out, K): per column tile and draw, B~ / (L_in q) with detected outputs as rows
    noise_std: Tensor  # (C, out, 1) sigma / q  (detector noise in ADC steps)
    out_scale: Tensor  # (C, out, 1) q g: one ADC step in output units per unit input scale
    dac_levels: int | None
    adc_levels: int | None
    noisy: bool

    @staticmethod
    def build(blocks: Tensor, mapped: _Mapped, p: MZIParams, sigma: float) -> _Inference:
        """From normalised blocks (D, R, C, K, K) and the mapping's per-block constants (see `noise` for the model)."""
        d, r_tiles, c_tiles, k, _ = blocks.shape
        inv, noise_std, out_scale, dac_levels, adc_levels = _inference_constants(mapped, p, sigma, k, blocks.dtype)
        weights = blocks.permute(2, 0, 1, 3, 4).reshape(c_tiles, d, r_tiles * k, k)[:, :, : mapped.rows]
        return _Inference(
            weights=(weights * _per_column(inv, k, mapped.rows, blocks.dtype)[:, None]).contiguous(),
            noise_std=noise_std,
            out_scale=out_scale,
            dac_levels=dac_levels,
            adc_levels=adc_levels,
            noisy=sigma > 0,
        )


def _layout(blocks: Tensor) -> Tensor:
    """Blocks (D, R, C, K, K) laid out for one batched matmul over column tiles: (D, C, K_in, R*K_out)."""
    d, r_tiles, c_tiles, k, _ = blocks.shape
    return blocks.permute(0, 2, 4, 1, 3).reshape(d, c_tiles, k, r_tiles * k)


def _column_constants(mapped: _Mapped, k: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per detected column (c, r*K+i): digital gain s_max and normalised ADC full scale FS / s_max, each (C, R*K)."""
    gain = mapped.sigma_max
    safe = torch.where(gain > 0, gain, torch.ones_like(gain))
    full_scale = mapped.full_scale / safe
    return gain.T.repeat_interleave(k, dim=-1).to(device, dtype), full_scale.T.repeat_interleave(k, dim=-1).to(
        device, dtype
    )


def _tiled_forward(
    rows: Tensor,
    weights: Tensor,
    mapped: _Mapped,
    p: MZIParams,
    sigma: float,
    generator: torch.Generator,
    *,
    train: bool,
) -> Tensor:
    """DAC -> optical blocks -> detector noise -> ADC -> digital rescale and accumulation over column tiles (no bias).

    rows (D, n, in); weights (D, C, K, R*K): normalised blocks in `_layout` order -> (D, n, out). Differentiable
    (straight-through converters) with train=True: noise-aware training; Monte-Carlo evaluation uses the fused
    `_inference_forward` (the same model, checked against this one in the tests).
    """
    draws, n, cols = rows.shape
    _, c_tiles, k, width = weights.shape
    dtype = weights.dtype
    gain, full_scale = _column_constants(mapped, k, dtype, weights.device)
    chunk = n if train else max(1, ROWS_PER_CHUNK_ELEMENTS // max(1, draws * c_tiles * width))
    outputs = []
    for start in range(0, n, chunk):
        x = rows[:, start : start + chunk].to(dtype)
        if c_tiles * k != cols:
            x = F.pad(x, (0, c_tiles * k - cols))
        x = x.reshape(draws, -1, c_tiles, k).transpose(1, 2)  # (D, C, m, K)
        scale = x.detach().abs().amax(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)  # per vector and column tile
        a = dac(x / scale, p.dac_bits, train=train)
        y = torch.matmul(a, weights)  # (D, C, m, R*K): every block's normalised partial sums
        y = detect(y, sigma, generator, train=train)
        y = adc(y, p.adc_bits, full_scale[:, None, :], train=train)
        y = y * (gain[:, None, :] * scale) if train else y.mul_(gain[:, None, :]).mul_(scale)
        outputs.append(y.sum(1)[..., : mapped.rows])
    return torch.cat(outputs, dim=1)


class _TrainingPool:
    """Hardware errors W_hw - W of one layer for the next training steps, drawn at once from fresh chips."""

    def __init__(self, backend: MZIBackend, layer: MatMul, generator: torch.Generator) -> None:
        with torch.no_grad():
            weight = layer.matrix().detach()
            draws = max(1, min(TRAINING_POOL_DRAWS, TRAINING_POOL_VALUES // weight.numel()))
            mapped = self.mapped = _map_matrix(weight, backend.params.mesh_size)
            if backend.uses_accelerator(weight.device):  # (C, D, out, K) -> (D, out, C K)
                blocks = backend._compiled_blocks(
                    mapped, draws, generator, mapped.sigma_max.numpy() / backend._nominal_loss(mapped)
                )
                hardware = blocks.permute(1, 2, 0, 3).reshape(draws, mapped.rows, -1)[:, :, : mapped.cols]
            else:
                blocks = backend._noisy_blocks(mapped, draws, generator)
                blocks = blocks * mapped.sigma_max[None, :, :, None, None].to(blocks.dtype)
                hardware = blocks.permute(0, 1, 3, 2, 4).reshape(draws, mapped.row_tiles * backend.params.mesh_size, -1)
                hardware = hardware[:, : mapped.rows, : mapped.cols]
            self.errors = (hardware - weight.to("cpu", hardware.dtype)).to(weight.device, weight.dtype)
        self.used = 0

    def next(self) -> Tensor | None:
        """The next unused error sample (out, in), or None when the pool is used up."""
        if self.used >= self.errors.shape[0]:
            return None
        self.used += 1
        return self.errors[self.used - 1]


def _training_program(backend: MZIBackend, layer: MatMul, generator: torch.Generator) -> Program:
    """rows (1, n, in) -> (1, n, out), differentiable in weights, bias and inputs; a fresh hardware sample per call."""

    def run(rows: Tensor) -> Tensor:
        entry = backend._pools.get(id(layer.weight))
        pool = entry[1] if entry is not None and entry[0]() is layer.weight else None
        error = pool.next() if pool is not None else None
        if pool is None or error is None:
            pool = _TrainingPool(backend, layer, generator)
            backend._pools = {key: value for key, value in backend._pools.items() if value[0]() is not None}
            backend._pools[id(layer.weight)] = (weakref.ref(layer.weight), pool)
            error = pool.next()
        assert error is not None
        mapped, k = pool.mapped, backend.params.mesh_size
        weight = layer.weight.reshape(layer.weight.shape[0], -1)
        effective = weight + error
        padded = F.pad(effective, (0, mapped.col_tiles * k - mapped.cols, 0, mapped.row_tiles * k - mapped.rows))
        tiles = padded.reshape(mapped.row_tiles, k, mapped.col_tiles, k).permute(0, 2, 1, 3)
        gain = mapped.sigma_max.to(tiles.device, tiles.dtype)
        weights = _layout((tiles / torch.where(gain > 0, gain, torch.ones_like(gain))[:, :, None, None]).unsqueeze(0))
        noise = generator if generator.device == rows.device else None  # a CPU generator cannot feed CUDA noise
        out = _tiled_forward(
            rows,
            weights.expand(rows.shape[0], -1, -1, -1),
            mapped,
            backend.params,
            backend.detector_sigma,
            noise,
            train=True,
        )
        return out if layer.bias is None else out + layer.bias

    return run


FAMILY = BackendFamily(name="mzi", build=MZIBackend, presets_dir=Path(__file__).parent.parent / "presets" / "mzi")
