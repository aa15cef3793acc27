"""Analog in-memory crossbar backend (PCM / RRAM): constants, constraints, energy and the network as chips compute it.

The reference model is short torch code that runs on any device: `devices` maps each linear / conv layer onto
differential conductance pairs and draws what D programmed chips hold at `t_inference` (programming noise,
device-to-device spread, stuck-at faults, finite levels, drift, 1/f read noise, drift compensation), `periphery`
computes the matrix-vector products through DACs, bit lines, output noise and ADCs, tile by tile, and `energy`
prices it. realize() draws every layer's cells for all D chips at once (one tensor per kind of error, no loop over
draws); training_programs() draws one fresh chip per training step and passes gradients straight through the
hardware error (W + (W_hw - W).detach()) and the converters, as aihwkit's hardware-aware training injects noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from uhnas.arch import ArchSummary
from uhnas.arch.build import MatMul, Network, Program
from uhnas.hardware.base import RealizedModel
from uhnas.hardware.card import BackendCard, EnergyReport, Violation
from uhnas.hardware.crossbar import energy
from uhnas.hardware.crossbar.devices import column_scales, sample_weights
from uhnas.hardware.crossbar.params import CrossbarParams
from uhnas.hardware.crossbar.periphery import tiled_forward
from uhnas.hardware.registry import BackendFamily, Preset, validate_params

SEED_LIMIT = 2**62
"""Upper bound (exclusive) of the per-layer seeds drawn for output noise at forward time."""


def is_ideal(p: CrossbarParams) -> bool:
    """Every non-ideality off: the chip computes the trained network exactly."""
    return (
        p.conductance_levels is None
        and p.prog_noise_scale == 0
        and p.d2d_std == 0
        and p.weight_noise == 0
        and p.stuck_on_rate == 0
        and p.stuck_off_rate == 0
        and p.drift_scale == 0
        and p.read_noise_scale == 0
        and not p.drift_compensation
        and p.dac_bits is None
        and p.adc_bits is None
        and p.adc_range is None
        and p.output_noise == 0
    )


def _inference_program(weights: Tensor, scales: Tensor, bias: Tensor | None, p: CrossbarParams, seed: int) -> Program:
    """rows (D, n, in) -> (D, n, out) through D fixed chips; output noise from a generator seeded at realize()."""
    generators: dict[torch.device, torch.Generator] = {}

    def run(rows: Tensor) -> Tensor:
        generator = None
        if p.output_noise > 0:
            generator = generators.get(rows.device)
            if generator is None:
                generator = generators[rows.device] = torch.Generator(device=rows.device)
                generator.manual_seed(seed)
        out = tiled_forward(rows, weights, scales, p, generator)
        return out if bias is None else out + bias

    return run


def _training_program(layer: MatMul, p: CrossbarParams, generator: torch.Generator) -> Program:
    """rows (1, n, in) -> (1, n, out), differentiable; a freshly programmed chip (one draw) per call."""

    def run(rows: Tensor) -> Tensor:
        matrix = layer.matrix()
        scales = column_scales(matrix)
        ideal = matrix / scales[:, None]
        hardware, gain = sample_weights(matrix, p, 1, generator)  # (1, out, in), (1, 1, 1), no grad
        weights = ideal.unsqueeze(0) + (hardware - ideal.unsqueeze(0)).detach()
        noise = generator if generator.device == rows.device else None  # a CPU generator cannot feed CUDA noise
        out = tiled_forward(rows, weights, scales * gain, p, noise, train=True)
        return out if layer.bias is None else out + layer.bias

    return run


class CrossbarBackend:
    """A weight-stationary PCM / RRAM crossbar accelerator: differential pairs, DACs, ADCs, digital periphery."""

    def __init__(self, preset: Preset) -> None:
        self.preset = preset
        self.name = preset.name
        self.params: CrossbarParams = validate_params(CrossbarParams, preset)

    def describe(self) -> BackendCard:
        """Card: precision, modelled effects and energy components, constants with sources."""
        p = self.params
        bits_in = "exact" if p.dac_bits is None else f"{p.dac_bits}-bit"
        bits_out = "exact" if p.adc_bits is None else f"{p.adc_bits}-bit"
        return BackendCard(
            name=self.name,
            family="crossbar",
            precision=f"analog in-memory, {bits_in} DAC inputs, {bits_out} ADC outputs, "
            f"{p.tile_rows}x{p.tile_cols} tiles, g_max {p.g_max_us} uS",
            description=self.preset.description,
            models=(
                f"weight-stationary mapping on {p.tile_rows}x{p.tile_cols} tiles, differential conductance pairs, "
                "per-column digital output scale",
                "finite conductance levels",
                "programming noise (conductance-dependent polynomial, per chip)",
                "device-to-device conductance spread (per chip)",
                "stuck-at-on / stuck-at-off faults (per chip)",
                f"conductance drift G (t/t0)^-nu read at t_inference = {p.t_inference:g} s"
                + (" with global drift compensation" if p.drift_compensation else ""),
                "1/f read noise accumulated up to t_inference",
                "input DAC quantisation (per-vector abs-max scaling), additive output noise, ADC range and "
                "quantisation per tile before digital accumulation",
                "energy: array reads (V^2 G t), DACs, ADCs, digital periphery, SRAM activations",
                "constraints: tiles on the chip, chip power at full throughput",
            ),
            constants=self.preset.card_constants(),
        )

    def check(self, summary: ArchSummary) -> list[Violation]:
        """Limits broken (a null limit is unlimited): max_tiles (tiles), max_power_w (W at full throughput)."""
        p = self.params
        measured = (
            ("max_tiles", p.max_tiles, energy.total_tiles(summary, p), "tiles"),
            ("max_power_w", p.max_power_w, energy.power_w(summary, p), "W"),
        )
        return [
            Violation(key, float(limit), float(actual), unit)
            for key, limit, actual, unit in measured
            if limit is not None and actual > limit
        ]

    def energy(self, summary: ArchSummary) -> EnergyReport:
        """Energy per inference by component (see `uhnas.hardware.crossbar.energy`)."""
        return energy.energy_report(summary, self.params)

    def realize(self, model: Network, draws: int, generator: torch.Generator) -> RealizedModel:
        """The network as `draws` programmed chips compute it at t_inference (all draws at once)."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        programs: dict[int, Program] = {}
        with torch.no_grad():
            for layer in model.matmuls():
                matrix = layer.matrix().detach()
                weights, gain = sample_weights(matrix, self.params, draws, generator)
                scales = column_scales(matrix) * gain  # (D, 1, out): digital output scale per chip and column
                bias = None if layer.bias is None else layer.bias.detach()
                seed = int(torch.randint(0, SEED_LIMIT, (1,), generator=generator))
                programs[layer.index] = _inference_program(weights, scales, bias, self.params, seed)
        return RealizedModel(model, programs, draws)

    def training_programs(self, model: Network, generator: torch.Generator) -> dict[int, Program] | None:
        """One-draw differentiable programs (noise injection, straight-through converters); None when ideal."""
        if is_ideal(self.params):
            return None
        return {layer.index: _training_program(layer, self.params, generator) for layer in model.matmuls()}


FAMILY = BackendFamily(
    name="crossbar", build=CrossbarBackend, presets_dir=Path(__file__).parent.parent / "presets" / "crossbar"
)
