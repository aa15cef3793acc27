"""MZI-mesh backend: constants (MZIParams), constraints, energy and the network as the chip computes it.

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
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from uhnas.arch import ArchSummary, MatMul, Network, Program
from uhnas.hardware.base import BackendCard, EnergyReport, RealizedModel, Violation
from uhnas.hardware.mzi import energy
from uhnas.hardware.mzi.mesh import MeshNoise, MeshPhases, clements_decompose, mesh_matrix
from uhnas.hardware.mzi.noise import adc, attenuator_field, dac, detect, detector_relative_noise, sample_attenuators
from uhnas.hardware.registry import BackendFamily, Preset, validate_params


class MZIParams(BaseModel):
    """Constants of an MZI-mesh backend (units in the names or in the preset YAML)."""

    model_config = ConfigDict(extra="forbid")
    # mapping and timing
    mesh_size: int = Field(ge=3, le=64)
    clock_ghz: float = Field(gt=0)
    # mesh non-idealities (0 / null = off)
    phase_noise_std: float = Field(ge=0)
    phase_bits: int | None = Field(default=None, ge=1, le=24)
    crosstalk: float = Field(ge=0, lt=0.5)
    loss_db_per_mzi: float = Field(ge=0)
    loss_db_std: float = Field(ge=0)
    coupler_error_std: float = Field(ge=0, lt=0.5)
    # converters (null bits = ideal converter, priced at the reference bits)
    dac_bits: int | None = Field(default=None, ge=1, le=24)
    adc_bits: int | None = Field(default=None, ge=1, le=24)
    dac_reference_bits: int = Field(ge=1, le=24)
    adc_reference_bits: int = Field(ge=1, le=24)
    dac_energy_pj: float = Field(ge=0)
    adc_energy_pj: float = Field(ge=0)
    modulator_energy_pj: float = Field(ge=0)
    # detection
    detector_noise: bool
    pd_sensitivity_dbm: float
    responsivity_a_per_w: float = Field(gt=0)
    dark_current_a: float = Field(ge=0)
    load_resistance_ohm: float = Field(gt=0)
    temperature_k: float = Field(ge=0)
    tia_power_mw: float = Field(ge=0)
    # laser and optics
    laser_wall_plug_efficiency: float = Field(gt=0, le=1)
    coupling_loss_db: float = Field(ge=0)
    # phase shifters
    phase_shifter_p_pi_mw: float = Field(ge=0)
    mean_phase_over_pi: float = Field(ge=0, le=2)
    # digital periphery
    digital_add_pj: float = Field(ge=0)
    digital_mult_pj: float = Field(ge=0)
    sram_pj_per_byte: float = Field(ge=0)
    activation_bytes: float = Field(gt=0)
    # chip limits (null = unlimited)
    max_mzis: int | None = Field(default=None, ge=1)
    max_optical_power_mw: float | None = Field(default=None, gt=0)


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
    u_phases: tuple[MeshPhases, ...]  # T Clements meshes for U, blocks in row-major (r, c) order
    v_phases: tuple[MeshPhases, ...]  # T Clements meshes for V^T
    transmission: Tensor  # (T, K) attenuator settings s / s_max, float64
    sigma_max: Tensor  # (R, C) largest singular value per block (restored electronically), float64
    full_scale: Tensor  # (R, C) largest row L1 norm of each block: ADC full scale per unit input scale, float64


def _map_matrix(weight: Tensor, mesh_size: int) -> _Mapped:
    """Tile, SVD and Clements-decompose a weight matrix (out x in), in float64."""
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
        u_phases=tuple(clements_decompose(m) for m in u.numpy()),
        v_phases=tuple(clements_decompose(m) for m in vh.numpy()),
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
                f"SVD mapping on {p.mesh_size}x{p.mesh_size} Clements meshes (weight-stationary tiles, partial sums detected per tile)",
                "phase noise per shifter (per draw)",
                "phase quantisation",
                "nearest-neighbour thermal crosstalk (uncalibrated)",
                "insertion-loss spread per MZI (per chip; nominal loss calibrated out)",
                "coupler splitting-ratio error (per chip)",
                "attenuator (Sigma) errors: quantisation, noise, crosstalk, couplers, loss",
                "coherent detection: real field component",
                "detector shot + thermal noise from the received laser power",
                "DAC and ADC quantisation",
                "energy: laser (SimPhony rule), DAC, modulators, ADC, TIAs, phase-shifter holding, digital periphery, SRAM",
                "constraints: MZI budget, optical power budget",
            ),
            constants=self.preset.card_constants(),
        )

    def check(self, summary: ArchSummary) -> list[Violation]:
        """Limits broken, named by preset key: max_mzis (weight-stationary MZIs), max_optical_power_mw (all layers lit)."""
        p = self.params
        violations = []
        mzis = energy.total_mzis(summary, p)
        if p.max_mzis is not None and mzis > p.max_mzis:
            violations.append(Violation("max_mzis", float(p.max_mzis), float(mzis), "MZIs"))
        optical = energy.total_optical_power_mw(summary, p)
        if p.max_optical_power_mw is not None and optical > p.max_optical_power_mw:
            violations.append(Violation("max_optical_power_mw", p.max_optical_power_mw, optical, "mW"))
        return violations

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
                blocks = self._noisy_blocks(mapped, draws, generator)
                seed = int(torch.randint(0, 2**62, (1,), generator=generator))  # detector noise, drawn at forward time
                programs[layer.index] = self._program(layer, mapped, blocks, seed)
        return RealizedModel(model, programs, draws)

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

    def _noisy_blocks(self, mapped: _Mapped, draws: int, generator: torch.Generator) -> Tensor:
        """Normalised blocks as `draws` chips realise them, (D, R, C, K, K): Re(U_d diag(a_d) V_d) / tau."""
        k, noise = self.params.mesh_size, self.mesh_noise
        tiles = len(mapped.u_phases)
        u = torch.stack([mesh_matrix(ph, draws=draws, noise=noise, generator=generator, dtype=self.dtype) for ph in mapped.u_phases], 1)
        v = torch.stack([mesh_matrix(ph, draws=draws, noise=noise, generator=generator, dtype=self.dtype) for ph in mapped.v_phases], 1)
        errors = sample_attenuators((tiles, k), noise, generator, chips=draws)
        field = attenuator_field(mapped.transmission, noise, errors, generator, draws).to(self.dtype)
        depth = mapped.u_phases[0].depth + mapped.v_phases[0].depth
        nominal = 10.0 ** (-depth * noise.loss_db_per_mzi / 20.0)
        block = torch.matmul(u * field[..., None, :], v).real / nominal
        return block.reshape(draws, mapped.row_tiles, mapped.col_tiles, k, k)

    def _program(self, layer: MatMul, mapped: _Mapped, blocks: Tensor, seed: int) -> Program:
        """rows (draws, n, in) -> (draws, n, out) through fixed blocks; detector noise seeded by `seed`."""
        layouts: dict[torch.device, Tensor] = {}
        generators: dict[torch.device, torch.Generator] = {}

        def run(rows: Tensor) -> Tensor:
            device = rows.device
            if device not in layouts:
                layouts[device] = _layout(blocks).to(device)
                generators[device] = torch.Generator(device=device).manual_seed(seed)
            with torch.no_grad():
                out = _tiled_forward(rows, layouts[device], mapped, self.params, self.detector_sigma, generators[device], train=False)
                if layer.bias is not None:
                    out = out + layer.bias.to(out.dtype)
            return out.to(rows.dtype)

        return run


def _layout(blocks: Tensor) -> Tensor:
    """Blocks (D, R, C, K, K) laid out for one batched matmul over column tiles: (D, C, K_in, R*K_out)."""
    d, r_tiles, c_tiles, k, _ = blocks.shape
    return blocks.permute(0, 2, 4, 1, 3).reshape(d, c_tiles, k, r_tiles * k)


def _column_constants(mapped: _Mapped, k: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per detected column (c, r*K+i): digital gain s_max and normalised ADC full scale FS / s_max, each (C, R*K)."""
    gain = mapped.sigma_max
    safe = torch.where(gain > 0, gain, torch.ones_like(gain))
    full_scale = mapped.full_scale / safe
    return gain.T.repeat_interleave(k, dim=-1).to(device, dtype), full_scale.T.repeat_interleave(k, dim=-1).to(device, dtype)


def _tiled_forward(
    rows: Tensor, weights: Tensor, mapped: _Mapped, p: MZIParams, sigma: float, generator: torch.Generator, *, train: bool
) -> Tensor:
    """DAC -> optical blocks -> detector noise -> ADC -> digital rescale and accumulation over column tiles (no bias).

    rows (D, n, in); weights (D, C, K, R*K): normalised blocks in `_layout` order -> (D, n, out).
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
            self.mapped = _map_matrix(weight, backend.params.mesh_size)
            blocks = backend._noisy_blocks(self.mapped, draws, generator)
            blocks = blocks * self.mapped.sigma_max[None, :, :, None, None].to(blocks.dtype)
            hardware = blocks.permute(0, 1, 3, 2, 4).reshape(draws, self.mapped.row_tiles * backend.params.mesh_size, -1)
            hardware = hardware[:, : self.mapped.rows, : self.mapped.cols]
            self.errors = (hardware - weight.to("cpu", hardware.dtype)).to(weight.device, weight.dtype)
        self.used = 0

    def next(self) -> Tensor | None:
        """The next unused error sample (out, in), or None when the pool is used up."""
        if self.used >= self.errors.shape[0]:
            return None
        self.used += 1
        return self.errors[self.used - 1]


def _training_program(backend: MZIBackend, layer: MatMul, generator: torch.Generator) -> Program:
    """rows (1, n, in) -> (1, n, out), differentiable in weights, bias and inputs, one fresh hardware sample per call."""

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
        out = _tiled_forward(rows, weights.expand(rows.shape[0], -1, -1, -1), mapped, backend.params, backend.detector_sigma, noise, train=True)
        return out if layer.bias is None else out + layer.bias

    return run


FAMILY = BackendFamily(name="mzi", build=MZIBackend, presets_dir=Path(__file__).parent.parent / "presets" / "mzi")
