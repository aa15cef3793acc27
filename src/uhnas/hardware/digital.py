"""Digital backends (GPU, CPU, ideal): energy per MAC, elementwise op and byte moved; precision emulation.

Energy per inference = MACs x pJ/MAC + elementwise ops x pJ/op + weight bytes fetched / batch x pJ/byte
+ activation bytes read and written x pJ/byte (by every layer but flatten and dropout, which move no data:
`uhnas.arch.DATA_FREE_LAYERS`). Numbers come from the preset YAML (with sources).
Digital devices are deterministic: every Monte-Carlo draw gives the same result.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from uhnas.arch import ArchSummary
from uhnas.arch.build import MatMul, Network, Program, forward_draws
from uhnas.hardware.base import RealizedModel
from uhnas.hardware.card import BackendCard, EnergyReport, Violation
from uhnas.hardware.precision import BYTES_PER_VALUE, Precision, round_to, straight_through
from uhnas.hardware.registry import BackendFamily, Preset, validate_params

PJ_PER_NJ = 1000.0


class DigitalParams(BaseModel):
    """Constants of a digital backend (units in the field names)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    precision: Precision
    energy_per_mac_pj: float = Field(gt=0)
    energy_per_op_pj: float = Field(ge=0)
    weight_memory_pj_per_byte: float = Field(ge=0)
    activation_memory_pj_per_byte: float = Field(ge=0)
    batch: int = Field(ge=1)
    peak_macs_per_s: float = Field(gt=0)
    memory_bytes: float | None = Field(default=None, gt=0)


def _program(layer: MatMul, precision: str, differentiable: bool) -> Program:
    """rows (draws, n, in) -> (draws, n, out) with weights and activations rounded to the precision."""

    def run(rows: Tensor) -> Tensor:
        weight, x = layer.matrix(), rows
        if differentiable:
            weight, x = (
                straight_through(weight, round_to(weight, precision)),
                straight_through(x, round_to(x, precision)),
            )
        else:
            weight, x = round_to(weight, precision), round_to(x, precision)
        out = torch.matmul(x, weight.T)
        if layer.bias is not None:
            out = out + round_to(layer.bias, precision)
        return round_to(out, precision) if not differentiable else straight_through(out, round_to(out, precision))

    return run


class DeterministicRealization(RealizedModel):
    """A realisation whose draws are all the same device (no randomness): the network runs once and its logits
    stand for every draw, instead of computing `draws` identical copies (through each conv's unfolded windows)."""

    @property
    def computed_draws(self) -> int:
        """One: the draws are one computation."""
        return 1

    def __call__(self, x: Tensor) -> Tensor:
        """Logits for every draw: (batch, ...) -> (draws, batch, classes), one computation broadcast."""
        once = forward_draws(self.model, self.programs, 1, x)
        return once.expand(self.draws, *once.shape[1:])


class DigitalBackend:
    """A GPU, CPU or ideal digital processor described by per-operation energies."""

    def __init__(self, preset: Preset) -> None:
        self.preset = preset
        self.name = preset.name
        self.params: DigitalParams = validate_params(DigitalParams, preset)

    def describe(self) -> BackendCard:
        """Card: precision, energy components, constants with sources."""
        return BackendCard(
            name=self.name,
            family="digital",
            precision=self.params.precision,
            description=self.preset.description,
            models=(
                "compute energy per MAC",
                "elementwise ops",
                "weight memory traffic",
                "activation memory traffic",
                f"{self.params.precision} rounding",
            ),
            constants=self.preset.card_constants(),
        )

    def check(self, summary: ArchSummary) -> list[Violation]:
        """Only a memory-capacity limit, when the preset sets one."""
        limit = self.params.memory_bytes
        weight_bytes = summary.params * BYTES_PER_VALUE[self.params.precision]
        if limit is not None and weight_bytes > limit:
            return [Violation("weight memory", limit, weight_bytes, "bytes")]
        return []

    def energy(self, summary: ArchSummary) -> EnergyReport:
        """Energy per inference by component, nJ."""
        p = self.params
        value_bytes = BYTES_PER_VALUE[p.precision]
        activation_values = sum(layer.in_numel + layer.out_numel for layer in summary.layers if layer.moves_data)
        breakdown = {
            "compute": summary.macs * p.energy_per_mac_pj / PJ_PER_NJ,
            "elementwise": summary.ops * p.energy_per_op_pj / PJ_PER_NJ,
            "weight_memory": summary.params * value_bytes / p.batch * p.weight_memory_pj_per_byte / PJ_PER_NJ,
            "activation_memory": activation_values * value_bytes * p.activation_memory_pj_per_byte / PJ_PER_NJ,
        }
        return EnergyReport(
            breakdown_nj=breakdown,
            latency_ns=summary.macs / p.peak_macs_per_s * 1e9,
            assumptions={
                "batch": p.batch,
                "precision": p.precision,
                "latency": "MACs at peak throughput (ideal utilisation)",
            },
        )

    def realize(self, model: Network, draws: int, generator: torch.Generator) -> RealizedModel:
        """The network with weights and activations rounded to the backend's precision."""
        programs = {
            layer.index: _program(layer, self.params.precision, differentiable=False) for layer in model.matmuls()
        }
        return DeterministicRealization(model, programs, draws)

    def training_programs(self, model: Network, generator: torch.Generator) -> dict[int, Program] | None:
        """Quantisation-aware training programs (straight-through) below fp32; None at fp32."""
        if self.params.precision == "fp32":
            return None
        return {layer.index: _program(layer, self.params.precision, differentiable=True) for layer in model.matmuls()}


FAMILY = BackendFamily(name="digital", build=DigitalBackend, presets_dir=Path(__file__).parent / "presets" / "digital")
