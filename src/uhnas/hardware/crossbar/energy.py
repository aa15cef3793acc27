"""Energy, latency and resources of a network on a weight-stationary crossbar chip (analytical, from the summary).

Per linear / conv layer with an out x in weight matrix read P times per inference (P = output pixels of a conv):
row tiles r = ceil(in / R), column tiles c = ceil(out / C), tiles r c (each holds its block for good).

- array: every cell of the mapped pairs is read each MVM: 2 in out P reads of V_read^2 G t_MVM d, with G the mean
  cell conductance (mean_conductance_fraction g_max) and d the mean input duty (pulse-width-modulated inputs:
  a row is driven for a fraction |x| / full scale of the integration window);
- DAC: one conversion per input per column tile per MVM (every tile has its own row drivers): in P c, at
  dac_energy_pj scaled by 2^b / (b + 1) from its reference bits (hardware.md's DAC scaling);
- ADC: one conversion per output per row tile per MVM: out P r, at adc_energy_pj scaled linearly in bits (SAR);
- digital: per input per column tile an abs-max compare and a division (DAC scaling); per ADC output a multiply
  (input x column scale) and an add (accumulation over row tiles, the bias); the network's elementwise ops
  (activations, pooling) at one add each;
- memory: activations read and written by every data-moving layer, at activation_bytes per value, through SRAM.

Latency: a layer's P MVMs run one after another on its tiles (all tiles of a layer in parallel), each
mvm_time_ns x ceil(columns in use / adcs_per_tile) (columns share ADCs); layers in sequence. Throughput: layers
pipelined, so one inference per slowest layer time. Power at that throughput is checked against max_power_w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from uhnas.arch import ArchSummary
from uhnas.hardware.card import EnergyReport
from uhnas.hardware.crossbar.params import CrossbarParams

PJ_PER_NJ = 1000.0
CELLS_PER_WEIGHT = 2  # differential pair G+ / G-


@dataclass(frozen=True)
class LayerCost:
    """Counts of one mapped layer per inference."""

    index: int
    rows: int  # in
    cols: int  # out
    reuse: int  # MVMs per inference (P)
    row_tiles: int
    col_tiles: int

    @property
    def tiles(self) -> int:
        """Crossbar tiles the layer occupies."""
        return self.row_tiles * self.col_tiles

    @property
    def cell_reads(self) -> int:
        """Cells read per inference (both cells of every pair, every MVM)."""
        return CELLS_PER_WEIGHT * self.rows * self.cols * self.reuse

    @property
    def dac_conversions(self) -> int:
        """Input conversions per inference: every input, for every column tile, every MVM."""
        return self.rows * self.col_tiles * self.reuse

    @property
    def adc_conversions(self) -> int:
        """Output conversions per inference: every output, for every row tile, every MVM."""
        return self.cols * self.row_tiles * self.reuse


def layer_costs(summary: ArchSummary, p: CrossbarParams) -> list[LayerCost]:
    """The mapped layers' tile counts and per-inference reads."""
    costs = []
    for layer in summary.matmuls:
        assert layer.matrix is not None
        out, n_in = layer.matrix
        costs.append(
            LayerCost(
                index=layer.index,
                rows=n_in,
                cols=out,
                reuse=max(1, layer.reuse),
                row_tiles=math.ceil(n_in / p.tile_rows),
                col_tiles=math.ceil(out / p.tile_cols),
            )
        )
    return costs


def total_tiles(summary: ArchSummary, p: CrossbarParams) -> int:
    """Tiles the weight-stationary mapping needs."""
    return sum(cost.tiles for cost in layer_costs(summary, p))


def dac_energy_pj(p: CrossbarParams) -> float:
    """One DAC conversion, pJ, scaled from the reference bits by 2^b / (b + 1) (null bits: the reference)."""
    bits = p.dac_bits or p.dac_reference_bits
    ref = p.dac_reference_bits
    return p.dac_energy_pj * (2**bits / (bits + 1)) / (2**ref / (ref + 1))


def adc_energy_pj(p: CrossbarParams) -> float:
    """One ADC conversion, pJ, scaled linearly in bits from the reference (SAR; null bits: the reference)."""
    return p.adc_energy_pj * (p.adc_bits or p.adc_reference_bits) / p.adc_reference_bits


def cell_read_energy_pj(p: CrossbarParams) -> float:
    """Mean energy of one cell read: V^2 x mean G x t_MVM x mean input duty, pJ."""
    conductance_s = p.mean_conductance_fraction * p.g_max_us * 1e-6
    return p.read_voltage_v**2 * conductance_s * p.mvm_time_ns * 1e-9 * p.mean_input_fraction * 1e12


def layer_times_ns(summary: ArchSummary, p: CrossbarParams) -> list[float]:
    """Time per inference of each mapped layer: P MVMs, each slowed by ADC sharing among the columns in use."""
    return [
        cost.reuse * p.mvm_time_ns * math.ceil(min(cost.cols, p.tile_cols) / p.adcs_per_tile)
        for cost in layer_costs(summary, p)
    ]


def breakdown_pj(summary: ArchSummary, p: CrossbarParams) -> dict[str, float]:
    """Energy per inference by component, pJ."""
    costs = layer_costs(summary, p)
    dac_ops = sum(c.dac_conversions for c in costs)
    adc_ops = sum(c.adc_conversions for c in costs)
    activation_values = sum(layer.in_numel + layer.out_numel for layer in summary.layers if layer.moves_data)
    return {
        "array": sum(c.cell_reads for c in costs) * cell_read_energy_pj(p),
        "dac": dac_ops * dac_energy_pj(p),
        "adc": adc_ops * adc_energy_pj(p),
        "digital": dac_ops * (p.digital_add_pj + p.digital_mult_pj)
        + adc_ops * (p.digital_mult_pj + p.digital_add_pj)
        + summary.ops * p.digital_add_pj,
        "memory": activation_values * p.activation_bytes * p.sram_pj_per_byte,
    }


def throughput_per_s(summary: ArchSummary, p: CrossbarParams) -> float:
    """Inferences per second with the layers pipelined (one inference per slowest layer)."""
    times = layer_times_ns(summary, p)
    return 1e9 / max(times) if times else math.inf


def power_w(summary: ArchSummary, p: CrossbarParams) -> float:
    """Average chip power at full pipelined throughput, W."""
    rate = throughput_per_s(summary, p)
    if not math.isfinite(rate):
        return 0.0
    return sum(breakdown_pj(summary, p).values()) * 1e-12 * rate


def energy_report(summary: ArchSummary, p: CrossbarParams) -> EnergyReport:
    """Energy per inference (nJ) by component, latency and the assumptions they rest on."""
    breakdown = {key: value / PJ_PER_NJ for key, value in breakdown_pj(summary, p).items()}
    times = layer_times_ns(summary, p)
    return EnergyReport(
        breakdown_nj=breakdown,
        latency_ns=float(sum(times)),
        assumptions={
            "mapping": f"weight-stationary, {p.tile_rows}x{p.tile_cols} tiles, differential pairs",
            "tiles": total_tiles(summary, p),
            "cell_read_pj": cell_read_energy_pj(p),
            "dac_pj_per_conversion": dac_energy_pj(p),
            "adc_pj_per_conversion": adc_energy_pj(p),
            "throughput_inferences_per_s": throughput_per_s(summary, p),
            "power_w_at_throughput": power_w(summary, p),
            "latency": "layers in sequence, a layer's MVMs in sequence on its tiles; digital layers not timed",
            "not priced": "programming the weights (once), static/leakage power, on-chip communication",
        },
    )


__all__ = [
    "LayerCost",
    "adc_energy_pj",
    "breakdown_pj",
    "cell_read_energy_pj",
    "dac_energy_pj",
    "energy_report",
    "layer_costs",
    "layer_times_ns",
    "power_w",
    "throughput_per_s",
    "total_tiles",
]
