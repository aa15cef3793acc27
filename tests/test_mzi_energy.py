"""MZI energy model, weight-stationary with the previous model's switches (`LEGACY`): every component against hand
arithmetic on the preset constants, and monotone in work. The time-multiplexed mapping and the energy terms of
issue 12 are tested in test_mzi_mapping.py."""

from __future__ import annotations

import math

import pytest

from uhnas.arch import analyze, parse_architecture
from uhnas.hardware.mzi import energy
from uhnas.hardware.mzi.params import MZIParams
from uhnas.hardware.registry import apply_overrides, load_preset, validate_params

LEGACY = {
    "mapping": "weight_stationary",
    "laser_gating": "per_layer",
    "reference_light_ratio": 0.0,
    "detector_power_rule": "sensitivity",
    "digital_energy_scale": 1.0,
}
"""The switches that give the model before issue 12: every tile its own meshes, lasers gated per layer, no reference
light, SimPhony's 2^bits laser rule, 45 nm digital figures."""


def _params(name: str, legacy: bool = True, **overrides: object) -> MZIParams:
    preset = apply_overrides(load_preset(name), {**(LEGACY if legacy else {}), **overrides})
    return validate_params(MZIParams, preset)


def _mlp(*widths: int):
    layers: list[dict] = [{"type": "flatten"}]
    for width in widths:
        layers += [{"type": "linear", "out_features": width}, {"type": "activation", "function": "relu"}]
    layers.append({"type": "linear", "out_features": 10})
    return analyze(parse_architecture({"layers": layers}), (1, 8, 8), 10)


def test_every_component_of_a_two_layer_mlp_matches_hand_arithmetic() -> None:
    p = _params("mzi-realistic")
    assert (p.mesh_size, p.clock_ghz, p.adc_bits, p.dac_bits) == (8, 10.0, 8, 8)
    report = energy.energy_report(_mlp(32), p)
    got = report.breakdown_nj
    cycle_s = 1 / 10e9

    # 64 -> 32: R = 4 row tiles, C = 8 column tiles (32 tiles); 32 -> 10: R = 2, C = 4 (8 tiles).
    # laser: P_rx = 10^(-25/10) mW * 2^8; IL = (2*8+1) * 0.2 + 1.0 = 4.4 dB; fan-out = in * R = 256 and 64.
    def laser_mw(fan_out: int) -> float:
        return 10 ** ((-25.0 + 4.4 + 10 * math.log10(fan_out)) / 10) * 2**8 / 0.2

    laser_pj = (laser_mw(64 * 4) + laser_mw(32 * 2)) * 1e-3 * cycle_s * 1e12
    assert got["laser"] == pytest.approx(laser_pj / 1e3, rel=1e-12)
    assert got["laser"] == pytest.approx(0.3567, abs=1e-4)  # 2852 mW + 713 mW for 0.1 ns
    # DACs and modulators: one conversion / symbol per input element per use: 64 + 32.
    assert got["dac"] == pytest.approx((64 + 32) * 3.57 / 1e3, rel=1e-12)
    assert got["modulators"] == pytest.approx((64 + 32) * 0.45 / 1e3, rel=1e-12)
    # ADCs: every output row detected once per column tile: 32 * 8 + 10 * 4 = 296 conversions at 8 bits.
    assert got["adc"] == pytest.approx(296 * 1.48 / 1e3, rel=1e-12)
    # TIAs: 296 detector-cycles at 3 mW for 0.1 ns each.
    assert got["detectors"] == pytest.approx(296 * 3e-3 * cycle_s * 1e12 / 1e3, rel=1e-12)
    # holding: 40 tiles * (2*64 + 8) shifters * 0.095 mW * 1.0, over 10^10 inferences/s (max reuse 1).
    assert got["phase_holding"] == pytest.approx(40 * 136 * 0.095e-3 / 10e9 * 1e12 / 1e3, rel=1e-12)
    # digital: mults = in + out*C per layer = (64 + 256) + (32 + 40) = 392;
    # adds = in + (C-1)*out + out (bias) = (64 + 224 + 32) + (32 + 30 + 10) = 392, plus 32 ReLU ops.
    assert got["digital"] == pytest.approx((392 * 1.1 + (392 + 32) * 0.4) / 1e3, rel=1e-12)
    # memory: (64+32) + (32+10) values through the matmuls, 32+32 through the ReLU, 2 bytes, 0.8275 pJ/byte.
    assert got["memory"] == pytest.approx((96 + 42 + 64) * 2 * 0.8275 / 1e3, rel=1e-12)
    assert report.total_nj == pytest.approx(sum(got.values()))
    assert set(got) == set(energy.COMPONENTS)
    assert report.latency_ns == pytest.approx(0.2)  # two layers, one cycle each at 10 GHz
    assert report.assumptions["inferences_per_second"] == pytest.approx(10e9)


def test_worst_case_preset_prices_loss_bits_and_heaters() -> None:
    p = _params("mzi-worst")
    got = energy.energy_report(_mlp(32), p).breakdown_nj
    il = (2 * 8 + 1) * 0.99 + 1.0

    def laser_mw(fan_out: int) -> float:
        return 10 ** ((-25.0 + il + 10 * math.log10(fan_out)) / 10) * 2**6 / 0.2

    assert got["laser"] == pytest.approx((laser_mw(256) + laser_mw(64)) * 1e-13 * 1e12 / 1e3, rel=1e-12)
    # 6-bit DAC: 3.57 pJ * (2^6/7) / (2^8/9); 6-bit ADC: 1.48 pJ * 6/8.
    assert got["dac"] == pytest.approx(96 * 3.57 * (64 / 7) / (256 / 9) / 1e3, rel=1e-12)
    assert got["adc"] == pytest.approx(296 * 1.48 * 6 / 8 / 1e3, rel=1e-12)
    assert got["phase_holding"] == pytest.approx(40 * 136 * 25e-3 / 10e9 * 1e9, rel=1e-12)  # W / (1/s) = J -> nJ


def test_conv_reuse_sets_throughput_and_latency() -> None:
    arch = parse_architecture(
        {
            "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1},
                {"type": "activation", "function": "relu"},
                {"type": "maxpool", "kernel": 2},
                {"type": "flatten"},
                {"type": "linear", "out_features": 10},
            ]
        }
    )
    summary = analyze(arch, (1, 8, 8), 10)
    p = _params("mzi-realistic")
    report = energy.energy_report(summary, p)
    # conv: 4 x 9 matrix used 64 times; fc: 10 x 64 used once.
    assert report.latency_ns == pytest.approx((64 + 1) * 0.1)
    assert report.assumptions["inferences_per_second"] == pytest.approx(10e9 / 64)
    tiles = 1 * 2 + 2 * 8
    assert report.breakdown_nj["phase_holding"] == pytest.approx(tiles * 136 * 0.095e-3 * 64 / 10e9 * 1e9, rel=1e-12)
    assert report.breakdown_nj["dac"] == pytest.approx((9 * 64 + 64) * 3.57 / 1e3, rel=1e-12)
    assert report.breakdown_nj["adc"] == pytest.approx((4 * 2 * 64 + 10 * 8) * 1.48 / 1e3, rel=1e-12)


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("preset", ["mzi-realistic", "mzi-worst"])
def test_energy_grows_with_width(preset: str, legacy: bool) -> None:
    p = _params(preset, legacy)
    narrow, wide = energy.energy_report(_mlp(32), p), energy.energy_report(_mlp(128), p)
    assert wide.total_nj > narrow.total_nj
    for component in energy.COMPONENTS:
        assert wide.breakdown_nj[component] >= narrow.breakdown_nj[component]


def test_more_output_bits_cost_laser_and_adc_energy() -> None:
    low, high = _params("mzi-realistic", adc_bits=4), _params("mzi-realistic", adc_bits=8)
    e_low, e_high = energy.energy_report(_mlp(32), low).breakdown_nj, energy.energy_report(_mlp(32), high).breakdown_nj
    assert e_high["laser"] == pytest.approx(16 * e_low["laser"])  # 2^bits rule
    assert e_high["adc"] == pytest.approx(2 * e_low["adc"])  # SAR energy ∝ bits
    assert energy.detector_power_mw(high) == pytest.approx(16 * energy.detector_power_mw(low))


def test_resource_counts() -> None:
    p = _params("mzi-realistic")
    summary = _mlp(32)
    assert energy.mzis_per_tile(8) == 64
    assert energy.total_mzis(summary, p) == 40 * 64
    ports = [64 * 4, 32 * 2]
    expected = sum(10 ** ((-25 + 4.4 + 10 * math.log10(f)) / 10) * 256 for f in ports)
    assert energy.total_optical_power_mw(summary, p) == pytest.approx(expected)
