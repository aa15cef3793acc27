"""Constants of an MZI-mesh backend (`MZIParams`), validated from a preset YAML.

A module of its own so that the energy model, the noise model and the backend all read the constants without
importing one another. Units are in the names or in the preset YAML; every value has a source there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mapping = Literal["weight_stationary", "time_multiplexed"]
LaserGating = Literal["none", "per_layer"]
DetectorPowerRule = Literal["sensitivity", "shot_noise"]
PhaseShifter = Literal["thermo_optic", "electro_optic", "mems"]
Simulator = Literal["auto", "compiled", "reference"]


class MZIParams(BaseModel):
    """Constants of an MZI-mesh backend (units in the names or in the preset YAML)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # Upper bounds on dB quantities keep 10^(dB/10) finite and reject values no device has: no working MZI loses
    # 10 dB (90 % of its light; the reference's worst is 0.99 dB), no chip couples in with 30 dB of loss, and a
    # detector's sensitivity lies far inside [-100, 20] dBm (hardware.md: -25 to -27 dBm).
    # mapping and timing
    mesh_size: int = Field(ge=3, le=64)
    clock_ghz: float = Field(gt=0)
    mapping: Mapping = "weight_stationary"
    cores: int = Field(default=1, ge=1)  # physical K x K SVD cores (time-multiplexed mapping)
    batch: int = Field(default=1, ge=1)  # inferences per programming of a tile (time-multiplexed mapping)
    # mesh non-idealities (0 / null = off)
    phase_noise_std: float = Field(ge=0)
    phase_bits: int | None = Field(default=None, ge=1, le=24)
    crosstalk: float = Field(ge=0, lt=0.5)
    loss_db_per_mzi: float = Field(ge=0, le=10)
    loss_db_std: float = Field(ge=0, le=10)
    coupler_error_std: float = Field(ge=0, lt=0.5)
    # converters (null bits = ideal converter, priced at the reference bits); signed quantisers need 2 bits at least:
    # b bits give 2^(b-1) - 1 levels per sign, none at b = 1
    dac_bits: int | None = Field(default=None, ge=2, le=24)
    adc_bits: int | None = Field(default=None, ge=2, le=24)
    dac_reference_bits: int = Field(ge=2, le=24)
    adc_reference_bits: int = Field(ge=2, le=24)
    dac_energy_pj: float = Field(ge=0)
    adc_energy_pj: float = Field(ge=0)
    modulator_energy_pj: float = Field(ge=0)
    # detection
    detector_noise: bool
    detector_power_rule: DetectorPowerRule = "sensitivity"
    detector_noise_lsb: float = Field(default=0.5, gt=0, le=16)  # shot_noise rule: target noise std in ADC steps
    pd_sensitivity_dbm: float = Field(ge=-100, le=20)
    responsivity_a_per_w: float = Field(gt=0)
    dark_current_a: float = Field(ge=0)
    load_resistance_ohm: float = Field(gt=0)
    temperature_k: float = Field(ge=0)
    tia_power_mw: float = Field(ge=0)
    # laser and optics
    laser_wall_plug_efficiency: float = Field(gt=0, le=1)
    coupling_loss_db: float = Field(ge=0, le=30)
    laser_gating: LaserGating = "per_layer"
    reference_light_ratio: float = Field(default=0.0, ge=0, le=100)  # LO power per detector / full-scale signal power
    # phase shifters: the technology, its holding power, settling time and switching energy
    phase_shifter: PhaseShifter = "thermo_optic"
    phase_shifter_p_pi_mw: float = Field(ge=0)  # thermo-optic holding power per pi
    mean_phase_over_pi: float = Field(ge=0, le=2)
    thermo_optic_settling_us: float = Field(default=0.0, ge=0)
    thermo_optic_switch_energy_pj: float = Field(default=0.0, ge=0)
    electro_optic_p_pi_mw: float = Field(default=0.0, ge=0)
    electro_optic_settling_us: float = Field(default=0.0, ge=0)
    electro_optic_switch_energy_pj: float = Field(default=0.0, ge=0)
    mems_p_pi_mw: float = Field(default=0.0, ge=0)
    mems_settling_us: float = Field(default=0.0, ge=0)
    mems_switch_energy_pj: float = Field(default=0.0, ge=0)
    # digital periphery (45 nm figures, scaled by digital_energy_scale to technology_node_nm)
    digital_add_pj: float = Field(ge=0)
    digital_mult_pj: float = Field(ge=0)
    sram_pj_per_byte: float = Field(ge=0)
    activation_bytes: float = Field(gt=0)
    technology_node_nm: float = Field(default=45.0, gt=0)
    digital_energy_scale: float = Field(default=1.0, gt=0, le=10)
    # chip limits (null = unlimited), checked by `MZIBackend.check`
    max_mesh_size: int | None = Field(default=None, ge=3)
    max_path_loss_db: float | None = Field(default=None, gt=0)
    max_phase_bits: int | None = Field(default=None, ge=1)
    max_mzis: int | None = Field(default=None, ge=1)
    max_phase_shifters: int | None = Field(default=None, ge=1)
    max_optical_power_mw: float | None = Field(default=None, gt=0)
    max_chip_power_w: float | None = Field(default=None, gt=0)
    # simulation choice (not hardware): the compiled CPU accelerator or the torch reference model
    simulator: Simulator = "auto"
