"""Energy, power, timing and resource model of a coherent MZI-mesh accelerator (pure arithmetic).

Tiling (per linear layer, and per conv as its im2col matrix W: out x in, used `reuse` = p times per inference):
W is cut into K x K tiles (K = mesh_size, edges zero-padded): R = ceil(out/K) row tiles, C = ceil(in/K) column
tiles, T = R*C tiles. A tile is an SVD block: two Clements meshes of K(K-1)/2 MZIs (U and V^T) and a column of K
attenuator MZIs (Sigma): K^2 MZIs and S = 2K^2 + K phase shifters (K^2 per mesh: one internal and one external
phase per MZI plus K output phases; one per attenuator). A programmed block takes one input vector per clock cycle.

Mapping (preset constant `mapping`):
- weight_stationary: every tile of every layer has its own block, programmed once and never again; all tiles of a
  layer work in parallel, layers are pipelined: the chip sustains f / max_l p_l inferences per second.
- time_multiplexed: the chip has `cores` physical blocks. Inferences run in batches of B = `batch`; layer by layer,
  a layer's tiles go through the cores in rounds of `cores` tiles, in column-major order (the R row tiles that read
  one input column block are neighbours, so one conversion of that block feeds all of them in a round); each round
  programs its tiles (every core settles for t_set, the phase shifters' settling time) and then streams the batch's
  B p_l input vectors. Each tile is programmed once per batch. Time per batch:
      t_batch = sum_l rounds_l (t_set + B p_l / f),  rounds_l = ceil(T_l / cores);
  latency = t_batch (a batch finishes together), time per inference t_inf = t_batch / B.

Received power per detector at full scale (`detector_power_rule`):
- sensitivity (SimPhony): P_rx = 10^(S_PD/10) mW x 2^b_o (thermal-noise-limited: each bit doubles the power).
- shot_noise: the power at which the simulator's own detector noise (`noise.detector_relative_noise`:
  sigma_I^2 = 2q(R P + I_dark) df + 4 k_B T df / R_L, df = f/2) equals the target sigma_rel = n_lsb / L,
  L = 2^(b_o - 1) - 1 ADC levels per sign, n_lsb = `detector_noise_lsb`: the positive root of
      (sigma_rel R P)^2 = 2 q R df P + 2 q I_dark df + 4 k_B T df / R_L.
  In the shot-noise-dominated regime each extra bit costs 4x the power, 2x where thermal noise dominates.

Per inference (f = clock, b_o = output/ADC bits, b_i = DAC bits; sources in the preset YAML and hardware.md):
- laser        P_port = P_rx 10^(IL_path/10), IL_path = (2K+1) IL_mzi + IL_coupling (SimPhony rule; fan-out F lit
               ports need F P_port). Lit ports: weight-stationary sum_l in_l R_l; time-multiplexed cores K.
- reference_light  coherent (homodyne) detection needs local-oscillator light at every detector:
               P_LO = ratio x P_rx x 10^(IL_coupling/10) per detector (it crosses no mesh). Detectors:
               weight-stationary sum_l out_l C_l; time-multiplexed cores K.
  Both lasers are electrical power / WPE. `laser_gating`: none = on for the whole time the chip runs
  (weight-stationary: every layer's light, 1 / throughput per inference; time-multiplexed: all cores' light for
  t_inf, reprogramming included); per_layer = a layer's light only while it computes (p_l / f per inference;
  time-multiplexed: a core's light only while its tile streams, T_l K ports for p_l / f).
- dac          conversions x E_dac(b_i), E_dac(b) = E_ref (2^b/(b+1)) / (2^b_ref/(b_ref+1))  (SimPhony);
               conversions = in_l p_l (weight-stationary) or, time-multiplexed, the inputs of every distinct column
               block in every round, times p_l (a column block split over rounds is converted again).
- modulators   one symbol per conversion x E_mod
- adc          out_l C_l p_l conversions (every tile's partial sums detected) x E_adc(b_o), E_adc ∝ bits (SimPhony)
- detectors    out_l C_l p_l TIA-cycles x P_TIA / f (one TIA per detected output, on while used)
- phase_holding  holding power P_hold = shifters x P_pi x mean(phase)/pi of the technology (`phase_shifter`):
               weight-stationary: every tile's shifters, x max_l p_l / f (the pipelined period);
               time-multiplexed: the cores' shifters, x the streaming time per inference sum_l rounds_l p_l / f.
- reprogramming  time-multiplexed only, per batch / B: every programmed tile's S shifters x (switching energy of
               the technology + one phase-DAC write E_dac(b_phase) + reading its phase code, b_phase/8 bytes, from
               on-chip memory), plus the cores' holding power during settling (P_hold x sum_l rounds_l t_set): for a
               thermo-optic shifter the heat that moves the phase is delivered during the settling time.
- digital      per layer and use: in compares + in multiplies (DAC scaling of each input vector by its max),
               out*C multiplies (rescaling each partial sum), (C-1)*out adds (accumulation), out adds (bias); plus
               the architecture's elementwise ops (activations, pooling, batchnorm) as adds (flatten and dropout
               move no data: `uhnas.arch.DATA_FREE_LAYERS`); 45 nm figures x `digital_energy_scale`.
- memory       activations through on-chip SRAM: (in + out) p values per matmul layer (time-multiplexed: every
               conversion reads its input, every detected partial sum is accumulated in memory), in + out values
               per elementwise layer, times bytes per value and pJ per byte (x `digital_energy_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from uhnas.arch import ArchSummary, LayerInfo
from uhnas.hardware.card import EnergyReport
from uhnas.hardware.mzi.params import MZIParams

PJ_PER_NJ = 1e3
MW_PER_W = 1e3
HZ_PER_GHZ = 1e9
NS_PER_S = 1e9
PJ_PER_J = 1e12
S_PER_US = 1e-6
W_PER_MW = 1e-3
BITS_PER_BYTE = 8
ELEMENTARY_CHARGE_C = 1.602176634e-19  # q, exact (SI 2019)
BOLTZMANN_J_PER_K = 1.380649e-23  # k_B, exact (SI 2019)
NYQUIST = 0.5  # detection bandwidth as a fraction of the symbol rate

COMPONENTS = (
    "laser",
    "reference_light",
    "dac",
    "modulators",
    "adc",
    "detectors",
    "phase_holding",
    "reprogramming",
    "digital",
    "memory",
)


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
    mesh_size: int = 8  # K

    @property
    def tiles(self) -> int:
        """T = R * C SVD blocks."""
        return self.row_tiles * self.col_tiles

    @property
    def lit_ports(self) -> int:
        """Weight-stationary mesh input ports that carry light: every input element, split to its R row tiles."""
        return self.cols * self.row_tiles

    @property
    def detected_outputs(self) -> int:
        """Partial sums detected per use: every output row once per column tile."""
        return self.rows * self.col_tiles

    def rounds(self, cores: int) -> int:
        """Time-multiplexed rounds of `cores` tiles that the layer's T tiles need."""
        return -(-self.tiles // cores)

    def converted_inputs(self, cores: int) -> int:
        """Time-multiplexed input conversions per use: every round converts each input column block it holds once
        (tiles in column-major order: tile t belongs to column block t // R; the last block has in - (C-1)K inputs).
        """
        k, r_tiles = self.mesh_size, self.row_tiles
        total = 0
        for start in range(0, self.tiles, cores):
            first, last = start // r_tiles, (min(start + cores, self.tiles) - 1) // r_tiles
            total += sum(min(k, self.cols - block * k) for block in range(first, last + 1))
        return total


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
                mesh_size=mesh_size,
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


def phase_write_bits(p: MZIParams) -> int:
    """Bits of a phase-DAC write: phase_bits, else the drivers' max_phase_bits, else the DAC reference bits."""
    for bits in (p.phase_bits, p.max_phase_bits):
        if bits is not None:
            return bits
    return p.dac_reference_bits


def path_loss_db(p: MZIParams) -> float:
    """Insertion loss of one SVD block's light path: (2K+1) MZIs crossed plus coupling, dB."""
    return (2 * p.mesh_size + 1) * p.loss_db_per_mzi + p.coupling_loss_db


def detection_bandwidth_hz(p: MZIParams) -> float:
    """Detection bandwidth df = clock / 2 (Nyquist), Hz."""
    return p.clock_ghz * HZ_PER_GHZ * NYQUIST


def thermal_noise_a2(p: MZIParams) -> float:
    """Thermal (Johnson) noise current variance of the load, 4 k_B T df / R_L, A^2."""
    return 4.0 * BOLTZMANN_J_PER_K * p.temperature_k * detection_bandwidth_hz(p) / p.load_resistance_ohm


def target_relative_noise(p: MZIParams) -> float:
    """The shot_noise rule's target: detector noise std relative to the full-scale photocurrent, n_lsb / L."""
    return p.detector_noise_lsb / (2 ** (output_bits(p) - 1) - 1)


def detector_power_mw(p: MZIParams) -> float:
    """Optical power a detector receives at full scale, mW (`detector_power_rule`, see the module docstring)."""
    if p.detector_power_rule == "sensitivity":
        return 10.0 ** (p.pd_sensitivity_dbm / 10.0) * 2.0 ** output_bits(p)
    df, resp = detection_bandwidth_hz(p), p.responsivity_a_per_w
    a = (target_relative_noise(p) * resp) ** 2
    b = 2.0 * ELEMENTARY_CHARGE_C * resp * df
    c = 2.0 * ELEMENTARY_CHARGE_C * p.dark_current_a * df + thermal_noise_a2(p)
    watts = (b + math.sqrt(b * b + 4.0 * a * c)) / (2.0 * a)
    return watts / W_PER_MW


def port_power_mw(p: MZIParams) -> float:
    """Optical laser power one lit mesh input port needs so its detectors get full scale, mW."""
    return detector_power_mw(p) * 10.0 ** (path_loss_db(p) / 10.0)


def reference_power_mw(p: MZIParams) -> float:
    """Optical local-oscillator power per detector (through the coupling loss only), mW."""
    return p.reference_light_ratio * detector_power_mw(p) * 10.0 ** (p.coupling_loss_db / 10.0)


def laser_optical_power_mw(p: MZIParams, fan_out: int) -> float:
    """Optical laser power feeding `fan_out` ports so each detector gets its full-scale power, mW (SimPhony rule)."""
    return detector_power_mw(p) * 10.0 ** ((path_loss_db(p) + 10.0 * math.log10(fan_out)) / 10.0)


def laser_wall_power_mw(p: MZIParams, fan_out: int) -> float:
    """Electrical (wall-plug) laser power for `fan_out` ports: optical / WPE, mW."""
    return laser_optical_power_mw(p, fan_out) / p.laser_wall_plug_efficiency


def dac_energy_pj(p: MZIParams, bits: int | None = None) -> float:
    """Energy per DAC conversion at `bits` (default: the input DAC's), scaled from the reference by 2^b/(b+1)
    (SimPhony), pJ."""
    bits, ref = input_bits(p) if bits is None else bits, p.dac_reference_bits
    return p.dac_energy_pj * (2.0**bits / (bits + 1)) / (2.0**ref / (ref + 1))


def adc_energy_pj(p: MZIParams) -> float:
    """Energy per ADC conversion, SAR power ∝ bits x rate (SimPhony), pJ."""
    return p.adc_energy_pj * output_bits(p) / p.adc_reference_bits


def shifter_technology(p: MZIParams) -> tuple[float, float, float]:
    """(holding power per pi in mW, settling time in s, switching energy in pJ) of the preset's phase shifters."""
    if p.phase_shifter == "thermo_optic":
        return p.phase_shifter_p_pi_mw, p.thermo_optic_settling_us * S_PER_US, p.thermo_optic_switch_energy_pj
    if p.phase_shifter == "electro_optic":
        return p.electro_optic_p_pi_mw, p.electro_optic_settling_us * S_PER_US, p.electro_optic_switch_energy_pj
    return p.mems_p_pi_mw, p.mems_settling_us * S_PER_US, p.mems_switch_energy_pj


def holding_power_mw(p: MZIParams, shifters: int) -> float:
    """Power to hold `shifters` phase shifters at their programmed phases, mW."""
    return shifters * shifter_technology(p)[0] * p.mean_phase_over_pi


def tile_program_energy_pj(p: MZIParams) -> float:
    """Energy to program one tile, beyond the holding power during settling: per shifter its switching energy, one
    phase-DAC write and reading its phase code from the on-chip SRAM, pJ."""
    bits = phase_write_bits(p)
    per_shifter = (
        shifter_technology(p)[2]
        + dac_energy_pj(p, bits)
        + bits / BITS_PER_BYTE * p.sram_pj_per_byte * p.digital_energy_scale
    )
    return shifters_per_tile(p.mesh_size) * per_shifter


def chip_tiles(summary: ArchSummary, p: MZIParams) -> int:
    """Physical SVD blocks on the chip: every tile (weight-stationary) or the cores (time-multiplexed)."""
    if p.mapping == "time_multiplexed":
        return p.cores
    return sum(m.tiles for m in map_layers(summary, p.mesh_size))


def total_mzis(summary: ArchSummary, p: MZIParams) -> int:
    """MZIs on the chip."""
    return chip_tiles(summary, p) * mzis_per_tile(p.mesh_size)


def total_shifters(summary: ArchSummary, p: MZIParams) -> int:
    """Phase shifters (and their drivers) on the chip."""
    return chip_tiles(summary, p) * shifters_per_tile(p.mesh_size)


def lit_ports_and_detectors(summary: ArchSummary, p: MZIParams) -> tuple[int, int]:
    """Mesh input ports lit and detectors read with the whole chip working (all layers / all cores)."""
    if p.mapping == "time_multiplexed":
        return p.cores * p.mesh_size, p.cores * p.mesh_size
    mappings = map_layers(summary, p.mesh_size)
    return sum(m.lit_ports for m in mappings), sum(m.detected_outputs for m in mappings)


def total_optical_power_mw(summary: ArchSummary, p: MZIParams) -> float:
    """Optical laser power (signal and reference light) with the whole chip lit at once, mW."""
    ports, detectors = lit_ports_and_detectors(summary, p)
    return ports * port_power_mw(p) + detectors * reference_power_mw(p)


def converters(summary: ArchSummary, p: MZIParams) -> tuple[int, int]:
    """(input DACs with their modulators, detectors with their ADCs and TIAs) on the chip: one per layer input and
    per detected output (weight-stationary; an input's light is split optically to its row tiles), or one per core
    port and core output (time-multiplexed)."""
    if p.mapping == "time_multiplexed":
        return p.cores * p.mesh_size, p.cores * p.mesh_size
    mappings = map_layers(summary, p.mesh_size)
    return sum(m.cols for m in mappings), sum(m.detected_outputs for m in mappings)


def chip_power_w(summary: ArchSummary, p: MZIParams) -> float:
    """Electrical power of the photonic chip with every block working at full rate: heaters holding every
    shifter, lasers (signal and reference light, wall plug), and at one conversion per cycle every DAC and modulator
    and every detector's ADC and TIA, W. (Digital periphery and SRAM are not counted: they may sit on another die.)"""
    dacs, adcs = converters(summary, p)
    rate_per_pj = p.clock_ghz * HZ_PER_GHZ / PJ_PER_J * MW_PER_W  # mW per pJ per cycle
    converters_mw = dacs * (dac_energy_pj(p) + p.modulator_energy_pj) * rate_per_pj + adcs * (
        adc_energy_pj(p) * rate_per_pj + p.tia_power_mw
    )
    laser_mw = total_optical_power_mw(summary, p) / p.laser_wall_plug_efficiency
    heaters_mw = holding_power_mw(p, total_shifters(summary, p))
    return (heaters_mw + laser_mw + converters_mw) / MW_PER_W


def batch_seconds(summary: ArchSummary, p: MZIParams) -> tuple[float, float]:
    """Time-multiplexed time per batch: (settling, streaming) seconds."""
    settle = shifter_technology(p)[1]
    cycle_s = 1.0 / (p.clock_ghz * HZ_PER_GHZ)
    mappings = map_layers(summary, p.mesh_size)
    settling = sum(m.rounds(p.cores) for m in mappings) * settle
    streaming = sum(m.rounds(p.cores) * p.batch * m.reuse for m in mappings) * cycle_s
    return settling, streaming


def inferences_per_second(summary: ArchSummary, p: MZIParams) -> float:
    """Throughput: pipelined layers (weight-stationary: the busiest layer's reuse cycles per inference) or a batch
    of B inferences per batch time (time-multiplexed)."""
    if p.mapping == "time_multiplexed":
        total = sum(batch_seconds(summary, p))
        return p.batch / total if total > 0 else math.inf
    busiest = max((m.reuse for m in map_layers(summary, p.mesh_size)), default=1)
    return p.clock_ghz * HZ_PER_GHZ / max(busiest, 1)


def _elementwise(layer: LayerInfo) -> bool:
    return layer.matrix is None and layer.moves_data


def energy_report(summary: ArchSummary, p: MZIParams) -> EnergyReport:
    """Energy per inference by component (nJ), latency and the assumptions behind them."""
    mappings = map_layers(summary, p.mesh_size)
    tm = p.mapping == "time_multiplexed"
    cycle_s = 1.0 / (p.clock_ghz * HZ_PER_GHZ)
    pj: dict[str, float] = dict.fromkeys(COMPONENTS, 0.0)
    wpe = p.laser_wall_plug_efficiency
    port_mw, lo_mw = port_power_mw(p) / wpe, reference_power_mw(p) / wpe  # wall-plug, per port / detector
    mults = adds = values = conversions = 0
    for m in mappings:
        converted = m.converted_inputs(p.cores) if tm else m.cols
        conversions += converted * m.reuse
        if p.laser_gating == "per_layer":
            ports, detectors = (m.tiles * p.mesh_size,) * 2 if tm else (m.lit_ports, m.detected_outputs)
            pj["laser"] += ports * port_mw / MW_PER_W * m.reuse * cycle_s * PJ_PER_J
            pj["reference_light"] += detectors * lo_mw / MW_PER_W * m.reuse * cycle_s * PJ_PER_J
        pj["dac"] += converted * m.reuse * dac_energy_pj(p)
        pj["modulators"] += converted * m.reuse * p.modulator_energy_pj
        pj["adc"] += m.detected_outputs * m.reuse * adc_energy_pj(p)
        pj["detectors"] += m.detected_outputs * m.reuse * p.tia_power_mw / MW_PER_W * cycle_s * PJ_PER_J
        mults += (m.cols + m.detected_outputs) * m.reuse
        adds += (m.cols + (m.col_tiles - 1) * m.rows + (m.rows if m.bias else 0)) * m.reuse
        values += (converted + (m.detected_outputs if tm else m.rows)) * m.reuse
    shifters = total_shifters(summary, p)
    hold_w = holding_power_mw(p, shifters) / MW_PER_W
    rate = inferences_per_second(summary, p)
    period_s = 1.0 / rate  # chip time per inference
    if tm:
        settling_s, streaming_s = batch_seconds(summary, p)
        programmed = sum(m.tiles for m in mappings)
        pj["phase_holding"] = hold_w * streaming_s / p.batch * PJ_PER_J
        pj["reprogramming"] = (programmed * tile_program_energy_pj(p) + hold_w * settling_s * PJ_PER_J) / p.batch
        latency_ns = (settling_s + streaming_s) * NS_PER_S
    else:
        pj["phase_holding"] = hold_w * period_s * PJ_PER_J
        latency_ns = sum(m.reuse for m in mappings) * cycle_s * NS_PER_S
    if p.laser_gating == "none":
        ports, detectors = lit_ports_and_detectors(summary, p)
        pj["laser"] = ports * port_mw / MW_PER_W * period_s * PJ_PER_J
        pj["reference_light"] = detectors * lo_mw / MW_PER_W * period_s * PJ_PER_J
    elementwise = [layer for layer in summary.layers if _elementwise(layer)]
    adds += sum(layer.ops for layer in elementwise)
    values += sum(layer.in_numel + layer.out_numel for layer in elementwise)
    scale = p.digital_energy_scale
    pj["digital"] = (mults * p.digital_mult_pj + adds * p.digital_add_pj) * scale
    pj["memory"] = values * p.activation_bytes * p.sram_pj_per_byte * scale
    ports, detectors = lit_ports_and_detectors(summary, p)
    assumptions: dict[str, Any] = {
        "mapping": (
            f"time-multiplexed: {p.cores} physical {p.mesh_size}x{p.mesh_size} SVD cores; each layer's tiles stream "
            f"through them in rounds, every tile programmed once per batch of {p.batch} inferences"
            if tm
            else "weight-stationary: every K x K tile has its own SVD block (2 Clements meshes + attenuators), "
            "programmed once and amortised over all inferences (no reprogramming)"
        ),
        "mesh_size": p.mesh_size,
        "tiles": sum(m.tiles for m in mappings),
        "chip_blocks": chip_tiles(summary, p),
        "mzis": total_mzis(summary, p),
        "phase_shifters": shifters,
        "clock_ghz": p.clock_ghz,
        "inferences_per_second": rate,
        "throughput": (
            "layer by layer over a batch: rounds x (settling + batch x reuse cycles)"
            if tm
            else "layers pipelined; each tile takes one input vector per clock cycle"
        ),
        "phase_shifter": p.phase_shifter,
        "settling_us": shifter_technology(p)[1] / S_PER_US,
        "laser_gating": p.laser_gating,
        "laser": (
            f"received power per detector {detector_power_mw(p):.4g} mW at full scale ({p.detector_power_rule} rule, "
            f"{output_bits(p)} bits); {ports} lit ports, {detectors} detectors with reference light"
        ),
        "laser_wall_power_mw_all_lit": ports * port_mw + detectors * lo_mw,
        "optical_power_mw_all_lit": total_optical_power_mw(summary, p),
        "chip_power_w": chip_power_w(summary, p),
        "holding_power_mw": hold_w * MW_PER_W,
        "adc_bits": output_bits(p),
        "dac_bits": input_bits(p),
        "path_loss_db": path_loss_db(p),
        "digital": (
            f"fp16 arithmetic (45 nm figures x {scale:g} for {p.technology_node_nm:g} nm): DAC scaling, partial-sum "
            "rescale and accumulation, bias, elementwise ops"
        ),
        "latency": "one batch, layer by layer" if tm else "sum over layers of reuse cycles at the clock",
    }
    if tm:
        assumptions["batch"] = p.batch
        assumptions["rounds"] = sum(m.rounds(p.cores) for m in mappings)
        assumptions["settling_s_per_batch"] = settling_s
        assumptions["streaming_s_per_batch"] = streaming_s
    return EnergyReport(
        breakdown_nj={key: value / PJ_PER_NJ for key, value in pj.items()},
        latency_ns=latency_ns,
        assumptions=assumptions,
    )
