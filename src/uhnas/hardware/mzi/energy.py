"""Energy, power and resource model of a weight-stationary coherent MZI-mesh accelerator (pure arithmetic).

Mapping (per linear layer, and per conv as its im2col matrix W: out x in, used `reuse` = p times per inference):
W is cut into K x K tiles (K = mesh_size, edges zero-padded): R = ceil(out/K) row tiles, C = ceil(in/K)
column tiles, T = R*C tiles. Every tile is its own SVD block (weight-stationary: all weights stay programmed):
two Clements meshes of K(K-1)/2 MZIs (U and V^T) and a column of K attenuator MZIs (Sigma), so K^2 MZIs and
2K^2 + K phase shifters per tile (K^2 per mesh: one internal and one external phase per MZI plus K output
phases; one per attenuator). A tile processes one input vector per clock cycle; all tiles of a layer work in
parallel, so a layer is busy for p cycles per inference.

Per inference (f = clock, b_o = output/ADC bits, b_i = DAC bits; sources in the preset YAML, hardware.md):
- laser      P_rx = 10^(S_PD/10) mW * 2^b_o                 received power per detector at full scale
             IL_path = (2K+1) * IL_mzi + IL_coupling       dB, MZIs crossed by an SVD block (hardware.md)
             P_layer = 10^((S_PD + IL_path + 10 log10(F))/10) mW * 2^b_o / WPE,  fan-out F = in * R lit ports
             (each input's modulated light is split to its R row tiles)               (SimPhony laser rule)
             E = P_layer * p / f                           lit only while the layer computes
- dac        in * p conversions * E_dac(b_i), E_dac(b) = E_ref * (2^b/(b+1)) / (2^b_ref/(b_ref+1))  (SimPhony)
- modulators in * p symbols * E_mod
- adc        out * C * p conversions (every tile's partial sums are detected) * E_adc(b_o),
             E_adc(b) = E_ref * b / b_ref                  SAR power ∝ bits x rate (SimPhony)
- detectors  out * C * p TIA-cycles * P_TIA / f            one TIA per detected output, on while used
- holding    P_hold = (sum_l T_l (2K^2 + K)) * P_pi * mean(phase)/pi;  the chip sustains f / max_l p_l
             inferences per second (pipelined layers), so E = P_hold * max_l p_l / f
- digital    per layer and use: in compares + in multiplies (DAC scaling of each input vector by its
             max), out*C multiplies (rescaling each partial sum), (C-1)*out adds (accumulation), out adds
             (bias); plus the architecture's elementwise ops (activations, pooling, batchnorm) as adds
             (flatten and dropout move no data: `uhnas.arch.DATA_FREE_LAYERS`)
- memory     activations through on-chip SRAM: (in + out) * p values per matmul layer, in + out values per
             elementwise layer, times bytes per value and pJ per byte (LT / CACTI)
Latency = sum_l p_l / f (each layer streams its p vectors; optics and converters pipelined within a cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uhnas.arch import ArchSummary, LayerInfo
from uhnas.hardware.card import EnergyReport

if TYPE_CHECKING:
    from uhnas.hardware.mzi.backend import MZIParams

PJ_PER_NJ = 1e3
MW_PER_W = 1e3
HZ_PER_GHZ = 1e9
NS_PER_S = 1e9
PJ_PER_J = 1e12

COMPONENTS = ("laser", "dac", "modulators", "adc", "detectors", "phase_holding", "digital", "memory")


@dataclass(frozen=True)
class LayerMapping:
    """How one matrix layer lands on K x K tiles."""

    index: int
    rows: int  # out
    cols: int  # in
    reuse: int  # matrix-vector products per inference
    row_tiles: int  # R
    col_tiles: int  # C
    bias: bool

    @property
    def tiles(self) -> int:
        """T = R * C SVD blocks, each with its own meshes (weight-stationary)."""
        return self.row_tiles * self.col_tiles

    @property
    def lit_ports(self) -> int:
        """Mesh input ports that carry light: every input element, split to its R row tiles."""
        return self.cols * self.row_tiles

    @property
    def detected_outputs(self) -> int:
        """Partial sums detected per use: every output row once per column tile."""
        return self.rows * self.col_tiles


def map_layers(summary: ArchSummary, mesh_size: int) -> list[LayerMapping]:
    """Tile every linear/conv matrix of the architecture onto K x K meshes."""
    mappings = []
    for layer in summary.matmuls:
        assert layer.matrix is not None
        rows, cols = layer.matrix
        mappings.append(
            LayerMapping(
                index=layer.index,
                rows=rows,
                cols=cols,
                reuse=layer.reuse,
                row_tiles=math.ceil(rows / mesh_size),
                col_tiles=math.ceil(cols / mesh_size),
                bias=layer.params > rows * cols,
            )
        )
    return mappings


def mzis_per_tile(mesh_size: int) -> int:
    """Two Clements meshes of K(K-1)/2 MZIs plus K attenuator MZIs: K^2."""
    return mesh_size * (mesh_size - 1) + mesh_size


def shifters_per_tile(mesh_size: int) -> int:
    """Two meshes of K^2 phases (2 per MZI + K output phases) plus one per attenuator: 2K^2 + K."""
    return 2 * mesh_size * mesh_size + mesh_size


def output_bits(p: MZIParams) -> int:
    """Bits of the detected output: the ADC's, or its reference resolution when the ADC is ideal (null)."""
    return p.adc_bits if p.adc_bits is not None else p.adc_reference_bits


def input_bits(p: MZIParams) -> int:
    """Bits of the input DAC, or its reference resolution when the DAC is ideal (null)."""
    return p.dac_bits if p.dac_bits is not None else p.dac_reference_bits


def path_loss_db(p: MZIParams) -> float:
    """Insertion loss of one SVD block's light path: (2K+1) MZIs crossed plus coupling, dB."""
    return (2 * p.mesh_size + 1) * p.loss_db_per_mzi + p.coupling_loss_db


def detector_power_mw(p: MZIParams) -> float:
    """Optical power a detector receives at full scale: sensitivity x 2^bits (SimPhony rule), mW."""
    return 10.0 ** (p.pd_sensitivity_dbm / 10.0) * 2.0 ** output_bits(p)


def laser_optical_power_mw(p: MZIParams, fan_out: int) -> float:
    """Optical laser power feeding `fan_out` ports so each detector gets its full-scale power, mW."""
    return detector_power_mw(p) * 10.0 ** ((path_loss_db(p) + 10.0 * math.log10(fan_out)) / 10.0)


def laser_wall_power_mw(p: MZIParams, fan_out: int) -> float:
    """Electrical (wall-plug) laser power for `fan_out` ports: optical / WPE, mW."""
    return laser_optical_power_mw(p, fan_out) / p.laser_wall_plug_efficiency


def dac_energy_pj(p: MZIParams) -> float:
    """Energy per DAC conversion, scaled from the reference by 2^b/(b+1) (SimPhony), pJ."""
    bits, ref = input_bits(p), p.dac_reference_bits
    return p.dac_energy_pj * (2.0**bits / (bits + 1)) / (2.0**ref / (ref + 1))


def adc_energy_pj(p: MZIParams) -> float:
    """Energy per ADC conversion, SAR power ∝ bits x rate (SimPhony), pJ."""
    return p.adc_energy_pj * output_bits(p) / p.adc_reference_bits


def total_mzis(summary: ArchSummary, p: MZIParams) -> int:
    """MZIs needed to hold every tile of the network at once (weight-stationary)."""
    return sum(m.tiles for m in map_layers(summary, p.mesh_size)) * mzis_per_tile(p.mesh_size)


def total_optical_power_mw(summary: ArchSummary, p: MZIParams) -> float:
    """Optical laser power with every layer lit at once (pipelined steady state), mW."""
    return sum(laser_optical_power_mw(p, m.lit_ports) for m in map_layers(summary, p.mesh_size))


def inferences_per_second(summary: ArchSummary, p: MZIParams) -> float:
    """Pipelined throughput: the busiest layer needs max reuse cycles per inference."""
    busiest = max((m.reuse for m in map_layers(summary, p.mesh_size)), default=1)
    return p.clock_ghz * HZ_PER_GHZ / max(busiest, 1)


def _elementwise(layer: LayerInfo) -> bool:
    return layer.matrix is None and layer.moves_data


def energy_report(summary: ArchSummary, p: MZIParams) -> EnergyReport:
    """Energy per inference by component (nJ), latency and the assumptions behind them."""
    mappings = map_layers(summary, p.mesh_size)
    cycle_s = 1.0 / (p.clock_ghz * HZ_PER_GHZ)
    pj: dict[str, float] = dict.fromkeys(COMPONENTS, 0.0)
    mults = adds = values = 0
    for m in mappings:
        pj["laser"] += laser_wall_power_mw(p, m.lit_ports) / MW_PER_W * m.reuse * cycle_s * PJ_PER_J
        pj["dac"] += m.cols * m.reuse * dac_energy_pj(p)
        pj["modulators"] += m.cols * m.reuse * p.modulator_energy_pj
        pj["adc"] += m.detected_outputs * m.reuse * adc_energy_pj(p)
        pj["detectors"] += m.detected_outputs * m.reuse * p.tia_power_mw / MW_PER_W * cycle_s * PJ_PER_J
        mults += (m.cols + m.detected_outputs) * m.reuse
        adds += (m.cols + (m.col_tiles - 1) * m.rows + (m.rows if m.bias else 0)) * m.reuse
        values += (m.cols + m.rows) * m.reuse
    shifters = sum(m.tiles for m in mappings) * shifters_per_tile(p.mesh_size)
    hold_w = shifters * p.phase_shifter_p_pi_mw * p.mean_phase_over_pi / MW_PER_W
    rate = inferences_per_second(summary, p)
    pj["phase_holding"] = hold_w / rate * PJ_PER_J
    elementwise = [layer for layer in summary.layers if _elementwise(layer)]
    adds += sum(layer.ops for layer in elementwise)
    values += sum(layer.in_numel + layer.out_numel for layer in elementwise)
    pj["digital"] = mults * p.digital_mult_pj + adds * p.digital_add_pj
    pj["memory"] = values * p.activation_bytes * p.sram_pj_per_byte
    latency_ns = sum(m.reuse for m in mappings) * cycle_s * NS_PER_S
    assumptions: dict[str, Any] = {
        "mapping": "weight-stationary: every K x K tile has its own SVD block (2 Clements meshes + attenuators)",
        "mesh_size": p.mesh_size,
        "tiles": sum(m.tiles for m in mappings),
        "mzis": total_mzis(summary, p),
        "phase_shifters": shifters,
        "clock_ghz": p.clock_ghz,
        "inferences_per_second": rate,
        "throughput": "layers pipelined; each tile takes one input vector per clock cycle",
        "laser": "lit only while its layer computes (reuse cycles per inference); 2^bits rule at the ADC bits",
        "laser_wall_power_mw_all_layers": sum(laser_wall_power_mw(p, m.lit_ports) for m in mappings),
        "holding_power_mw": hold_w * MW_PER_W,
        "holding": "phase-shifter power held continuously, amortised over the inferences per second",
        "adc_bits": output_bits(p),
        "dac_bits": input_bits(p),
        "path_loss_db": path_loss_db(p),
        "digital": "fp16 arithmetic: DAC scaling, partial-sum rescale and accumulation, bias, elementwise ops",
        "weights": "programmed once and amortised over many inferences (no weight traffic or reprogramming)",
        "latency": "sum over layers of reuse cycles at the clock",
    }
    return EnergyReport(
        breakdown_nj={key: value / PJ_PER_NJ for key, value in pj.items()},
        latency_ns=latency_ns,
        assumptions=assumptions,
    )
