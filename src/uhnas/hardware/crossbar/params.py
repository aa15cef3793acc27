"""Constants of an analog crossbar backend (`CrossbarParams`), validated from a preset YAML.

A module of its own so that the device model, the periphery model, the energy model and the backend all read the
constants without importing one another. Units are in the names or in the preset YAML; every value has a source
there. A non-ideality is switched off by a zero scale / rate / std or a null bit count.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CrossbarParams(BaseModel):
    """Constants of a PCM / RRAM crossbar accelerator (units in the names or in the preset YAML)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # mapping and timing: R x C tiles (rows = inputs, columns = outputs), one MVM per tile per mvm_time_ns
    tile_rows: int = Field(ge=1, le=8192)
    tile_cols: int = Field(ge=1, le=8192)
    mvm_time_ns: float = Field(gt=0)
    adcs_per_tile: int = Field(ge=1)
    # conductance range and mapping: differential pair (G+ - G-), max |w| of each output column -> g_max
    g_max_us: float = Field(gt=0, le=1e4)
    conductance_levels: int | None = Field(default=None, ge=2, le=1 << 16)
    # programming noise: sigma(g) = sum_i c_i (g / g_max)^i micro-siemens at the reference g_max, times the scale
    prog_noise_scale: float = Field(ge=0)
    prog_noise_coeff_us: list[float] = Field(min_length=1, max_length=8)
    prog_noise_reference_g_max_us: float = Field(gt=0)
    # RRAM: device-to-device gain spread (relative, per device, fixed per chip) and stuck-at faults
    d2d_std: float = Field(ge=0, lt=1)
    weight_noise: float = Field(ge=0, le=10)  # additive Gaussian per device, sigma in units of g_max
    stuck_on_rate: float = Field(ge=0, le=1)
    stuck_off_rate: float = Field(ge=0, le=1)
    # PCM drift G(t) = G_prog ((t + t0) / t0)^(-nu), nu ~ |N(mu(g), sd(g))| x scale; compensation per layer
    drift_scale: float = Field(ge=0, le=10)
    drift_t0_s: float = Field(gt=0)
    drift_nu_mean: list[float] = Field(min_length=2, max_length=2)  # mu = a ln(g/g_max) + b
    drift_nu_mean_clip: list[float] = Field(min_length=2, max_length=2)
    drift_nu_std: list[float] = Field(min_length=2, max_length=2)  # sd = a ln(g/g_max) + b
    drift_nu_std_clip: list[float] = Field(min_length=2, max_length=2)
    t_inference: float = Field(ge=0, le=1e10)
    drift_compensation: bool
    # PCM 1/f read noise accumulated up to t: sigma/G = scale Q_s sqrt(ln((t + t_r) / (2 t_r)))
    read_noise_scale: float = Field(ge=0, le=10)
    read_noise_q: float = Field(ge=0)  # Q_s = min(q / (g/g_max)^exponent, q_max)
    read_noise_q_exponent: float = Field(ge=0)
    read_noise_q_max: float = Field(ge=0)
    read_noise_t_read_s: float = Field(gt=0)
    # periphery: DAC inputs (per vector abs-max scaling), output noise and ADC range in units of one g_max cell at
    # full-scale input; null bits = ideal converter (priced at the reference bits), null range = no clipping
    dac_bits: int | None = Field(default=None, ge=2, le=24)
    adc_bits: int | None = Field(default=None, ge=2, le=24)
    adc_range: float | None = Field(default=None, gt=0)
    output_noise: float = Field(ge=0, le=100)
    # energy
    read_voltage_v: float = Field(ge=0, le=5)
    mean_conductance_fraction: float = Field(ge=0, le=1)
    mean_input_fraction: float = Field(ge=0, le=1)
    dac_energy_pj: float = Field(ge=0)
    dac_reference_bits: int = Field(ge=2, le=24)
    adc_energy_pj: float = Field(ge=0)
    adc_reference_bits: int = Field(ge=2, le=24)
    digital_add_pj: float = Field(ge=0)
    digital_mult_pj: float = Field(ge=0)
    sram_pj_per_byte: float = Field(ge=0)
    activation_bytes: float = Field(gt=0)
    # chip limits (null = unlimited), checked by `CrossbarBackend.check`
    max_tiles: int | None = Field(default=None, ge=1)
    max_power_w: float | None = Field(default=None, gt=0)
