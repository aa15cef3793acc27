"""Issue 12: the time-multiplexed mapping, the energy terms added with it (reference light, laser gating, the
shot-noise laser rule, reprogramming, technology scaling), the chip constraints, and the weight-stationary switch
reproducing the previous model. Hand arithmetic on the preset constants throughout."""

from __future__ import annotations

import math

import pytest

from uhnas.arch import analyze, load_architecture, parse_architecture
from uhnas.hardware.mzi import energy
from uhnas.hardware.mzi.noise import detector_relative_noise
from uhnas.hardware.mzi.params import MZIParams
from uhnas.hardware.registry import apply_overrides, load_backend, load_preset, validate_params

LEGACY = [
    "mapping=weight_stationary",
    "laser_gating=per_layer",
    "reference_light_ratio=0",
    "detector_power_rule=sensitivity",
    "digital_energy_scale=1",
]
CYCLE_S = 1e-10  # 10 GHz
Q, KB = 1.602176634e-19, 1.380649e-23


def _params(name: str, *overrides: str) -> MZIParams:
    return validate_params(MZIParams, apply_overrides(load_preset(name), list(overrides)))


def _mlp(*widths: int, shape: tuple[int, ...] = (1, 8, 8)):
    layers: list[dict] = [{"type": "flatten"}]
    for width in widths:
        layers += [{"type": "linear", "out_features": width}, {"type": "activation", "function": "relu"}]
    layers.append({"type": "linear", "out_features": 10})
    return analyze(parse_architecture({"layers": layers}), shape, 10)


def _mnist_mlp():
    return analyze(load_architecture("examples/mlp_digits.json"), (1, 28, 28), 10)


# The previous model's figures for examples/mlp_digits.json on 28x28 inputs (784 -> 64 -> 10), recorded before
# issue 12 (nJ per inference, and its violations).
BEFORE = {
    "mzi-realistic": (
        {
            "laser": 7.134933728920215,
            "dac": 3.02736,
            "modulators": 0.3816,
            "adc": 9.40096,
            "detectors": 1.9056,
            "phase_holding": 1.0336,
            "digital": 10.8256,
            "memory": 1.73775,
        },
        [("max_mzis", 32768.0, 51200.0), ("max_optical_power_mw", 10000.0, 14269.867457840428)],
    ),
    "mzi-worst": (
        {
            "laser": 39.294335808927535,
            "dac": 0.97308,
            "modulators": 0.3816,
            "adc": 7.05072,
            "detectors": 1.9056,
            "phase_holding": 272.0,
            "digital": 10.8256,
            "memory": 1.73775,
        },
        [("max_mzis", 32768.0, 51200.0), ("max_optical_power_mw", 10000.0, 78588.67161785507)],
    ),
}


@pytest.mark.parametrize("preset", ["mzi-realistic", "mzi-worst"])
def test_weight_stationary_with_the_old_switches_reproduces_the_previous_model(preset: str) -> None:
    backend = load_backend(preset, LEGACY)
    summary = _mnist_mlp()
    got = backend.energy(summary).breakdown_nj
    before, violations = BEFORE[preset]
    for component, value in before.items():
        assert got[component] == pytest.approx(value, rel=1e-12), component
    assert got["reprogramming"] == 0 and got["reference_light"] == 0
    report = backend.energy(summary)
    assert report.latency_ns == pytest.approx(0.2)
    old = {"max_mzis", "max_optical_power_mw"}  # the two limits the previous model had beyond the preset's own
    measured = [(v.constraint, v.limit, v.actual) for v in backend.check(summary) if v.constraint in old]
    assert [(c, lim) for c, lim, _ in measured] == [(c, lim) for c, lim, _ in violations]
    assert [a for _, _, a in measured] == pytest.approx([a for _, _, a in violations], rel=1e-12)


def test_mapping_switch_mnist_mlp_infeasible_weight_stationary_feasible_time_multiplexed() -> None:
    summary = _mnist_mlp()
    assert load_backend("mzi-realistic").check(summary) == []
    stationary = {v.constraint: v for v in load_backend("mzi-realistic", ["mapping=weight_stationary"]).check(summary)}
    assert stationary["max_mzis"].actual == 51200 and stationary["max_mzis"].limit == 32768
    assert stationary["max_phase_shifters"].actual == 800 * 136
    report = load_backend("mzi-realistic").energy(summary)
    assert report.breakdown_nj["reprogramming"] > 0 and report.breakdown_nj["reference_light"] > 0
    assert report.assumptions["mzis"] == 16 * 64 and report.assumptions["tiles"] == 800


def test_time_multiplexed_two_layer_mlp_matches_hand_arithmetic() -> None:
    p = _params("mzi-realistic")
    assert (p.mapping, p.cores, p.batch, p.laser_gating, p.phase_shifter) == (
        "time_multiplexed",
        16,
        64,
        "none",
        "thermo_optic",
    )
    report = energy.energy_report(_mlp(32), p)
    got = report.breakdown_nj
    # 64 -> 32: R = 4, C = 8, T = 32 (2 rounds of 16 cores); 32 -> 10: R = 2, C = 4, T = 8 (1 round).
    settling = 3 * 2600e-6
    streaming = (2 * 64 + 64) * CYCLE_S  # rounds x batch x reuse cycles
    period = (settling + streaming) / 64
    assert report.latency_ns == pytest.approx((settling + streaming) * 1e9, rel=1e-12)
    p_rx = energy.detector_power_mw(p)
    # lasers on all the time (gating none): 16 cores x 8 ports x P_rx through 4.4 dB; reference light to 128
    # detectors through the 1 dB coupling loss; wall-plug 0.2.
    assert got["laser"] == pytest.approx(128 * p_rx * 10**0.44 / 0.2 * 1e-3 * period * 1e9, rel=1e-12)
    assert got["reference_light"] == pytest.approx(128 * p_rx * 10**0.1 / 0.2 * 1e-3 * period * 1e9, rel=1e-12)
    hold_w = 16 * 136 * 0.095e-3
    assert got["phase_holding"] == pytest.approx(hold_w * streaming / 64 * 1e9, rel=1e-12)
    # reprogramming per batch: 40 tiles x 136 shifters x (0 pJ switch + 8-bit DAC write 3.57 pJ + 1 byte of SRAM at
    # 0.8275 pJ x 0.2), plus the cores' holding power through 3 settlings of 2.6 ms; per inference / 64.
    per_batch_pj = 40 * 136 * (3.57 + 0.8275 * 0.2) + hold_w * settling * 1e12
    assert got["reprogramming"] == pytest.approx(per_batch_pj / 64 / 1e3, rel=1e-12)
    # converters as weight-stationary here: every column block is converted once per round (64 + 32 inputs).
    assert got["dac"] == pytest.approx(96 * 3.57 / 1e3, rel=1e-12)
    assert got["modulators"] == pytest.approx(96 * 0.45 / 1e3, rel=1e-12)
    assert got["adc"] == pytest.approx(296 * 1.48 / 1e3, rel=1e-12)
    assert got["detectors"] == pytest.approx(296 * 3e-3 * CYCLE_S * 1e12 / 1e3, rel=1e-12)
    # digital at 0.2 x the 45 nm figures; memory: inputs read per conversion (96), partial sums accumulated (296),
    # ReLU in + out (64).
    assert got["digital"] == pytest.approx((392 * 1.1 + 424 * 0.4) * 0.2 / 1e3, rel=1e-12)
    assert got["memory"] == pytest.approx((96 + 296 + 64) * 2 * 0.8275 * 0.2 / 1e3, rel=1e-12)
    assert report.total_nj == pytest.approx(sum(got.values()))
    assert report.assumptions["inferences_per_second"] == pytest.approx(64 / (settling + streaming))


def test_converted_inputs_follow_the_column_major_rounds() -> None:
    m = energy.LayerMapping(index=0, rows=20, cols=20, reuse=1, row_tiles=3, col_tiles=3, bias=False, mesh_size=8)
    # 9 tiles, column block t // 3; widths 8, 8, 4. 4 cores: rounds {0..3}: blocks 0,1; {4..7}: 1,2; {8}: 2.
    assert m.rounds(4) == 3
    assert m.converted_inputs(4) == (8 + 8) + (8 + 4) + 4
    assert m.converted_inputs(9) == 20  # one round: every input once, as weight-stationary
    assert m.converted_inputs(1) == 3 * 8 + 3 * 8 + 3 * 4  # one tile per round: every tile converts its block


def test_shot_noise_rule_solves_the_simulators_noise_model() -> None:
    for name in ("mzi-realistic", "mzi-worst"):
        p = _params(name)
        bits = p.adc_bits
        assert bits is not None
        target = 0.2887 / (2 ** (bits - 1) - 1)
        assert detector_relative_noise(p) == pytest.approx(target, rel=1e-9)
        # by hand: sigma_I^2 = 2 q (I + I_d) df + 4 k T df / R, df = 5 GHz, at the rule's power
        current = energy.detector_power_mw(p) * 1e-3
        df = 5e9
        sigma = math.sqrt(2 * Q * (current + 1e-10) * df + 4 * KB * 300 * df / 1000)
        assert sigma / current == pytest.approx(target, rel=1e-9)
    realistic = _params("mzi-realistic")
    assert energy.detector_power_mw(realistic) == pytest.approx(0.355, rel=0.01)  # vs 0.81 mW by the 2^8 rule
    # shot-noise dominated (many bits): each bit costs ~4x; thermal dominated (few bits): ~2x.
    many = [energy.detector_power_mw(_params("mzi-realistic", f"adc_bits={b}")) for b in (12, 13)]
    few = [energy.detector_power_mw(_params("mzi-realistic", f"adc_bits={b}")) for b in (3, 4)]
    assert many[1] / many[0] == pytest.approx(4 * (2**11 - 1) ** 2 / (2**12 - 1) ** 2 * 4, rel=0.05)
    assert 2.0 < few[1] / few[0] < 2.6
    legacy = _params("mzi-realistic", "detector_power_rule=sensitivity")
    assert energy.detector_power_mw(legacy) == pytest.approx(10**-2.5 * 256)


def test_laser_gating_and_reference_light_weight_stationary() -> None:
    summary = _mlp(32)
    gated = _params("mzi-realistic", "mapping=weight_stationary", "laser_gating=per_layer")
    always = _params("mzi-realistic", "mapping=weight_stationary")
    p_rx = energy.detector_power_mw(always)
    g, a = energy.energy_report(summary, gated).breakdown_nj, energy.energy_report(summary, always).breakdown_nj
    # per layer: layer l lit for its reuse cycle; 256 + 64 lit ports; 296 detectors' reference light
    assert g["laser"] == pytest.approx(320 * p_rx * 10**0.44 / 0.2 * 1e-3 * CYCLE_S * 1e9, rel=1e-12)
    assert g["reference_light"] == pytest.approx(296 * p_rx * 10**0.1 / 0.2 * 1e-3 * CYCLE_S * 1e9, rel=1e-12)
    # never gated: everything lit for the pipelined period (max reuse 1 cycle): the same for this MLP ...
    assert a["laser"] == pytest.approx(g["laser"], rel=1e-12)
    # ... but a conv layer used 64 times keeps the classifier's light on for 64 cycles too
    conv = analyze(
        parse_architecture(
            {
                "layers": [
                    {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1},
                    {"type": "flatten"},
                    {"type": "linear", "out_features": 10},
                ]
            }
        ),
        (1, 8, 8),
        10,
    )
    g, a = energy.energy_report(conv, gated).breakdown_nj, energy.energy_report(conv, always).breakdown_nj
    ports_conv, ports_fc = 9 * 1, 256 * 2  # in x R
    port_nj = p_rx * 10**0.44 / 0.2 * 1e-3 * CYCLE_S * 1e9
    assert g["laser"] == pytest.approx((ports_conv * 64 + ports_fc * 1) * port_nj, rel=1e-12)
    assert a["laser"] == pytest.approx((ports_conv + ports_fc) * 64 * port_nj, rel=1e-12)
    # the reference light is the ratio times the received power per detector
    assert energy.reference_power_mw(_params("mzi-realistic", "reference_light_ratio=0.5")) == pytest.approx(
        0.5 * p_rx * 10**0.1
    )


@pytest.mark.parametrize(
    ("shifter", "hold_mw", "settle_s", "switch_pj"),
    [("electro_optic", 0.0, 1e-9, 1.0), ("mems", 0.0, 1e-6, 0.6), ("thermo_optic", 25.0, 10e-6, 0.0)],
)
def test_phase_shifter_technologies_price_reprogramming(
    shifter: str, hold_mw: float, settle_s: float, switch_pj: float
) -> None:
    p = _params("mzi-worst", f"phase_shifter={shifter}")
    assert energy.shifter_technology(p) == pytest.approx((hold_mw, settle_s, switch_pj))
    got = energy.energy_report(_mlp(32), p).breakdown_nj
    dac6 = 3.57 * (64 / 7) / (256 / 9)  # 6-bit phase writes
    hold_w = 16 * 136 * hold_mw * 1e-3
    per_batch_pj = 40 * 136 * (switch_pj + dac6 + 6 / 8 * 0.8275 * 0.2) + hold_w * 3 * settle_s * 1e12
    assert got["reprogramming"] == pytest.approx(per_batch_pj / 64 / 1e3, rel=1e-12)


def test_weight_stationary_never_reprograms() -> None:
    got = energy.energy_report(_mlp(32), _params("mzi-worst", "mapping=weight_stationary")).breakdown_nj
    assert got["reprogramming"] == 0


def test_digital_periphery_scales_with_the_technology_node() -> None:
    summary = _mlp(32)
    at45 = energy.energy_report(summary, _params("mzi-realistic", "digital_energy_scale=1")).breakdown_nj
    at7 = energy.energy_report(summary, _params("mzi-realistic")).breakdown_nj
    assert at7["digital"] == pytest.approx(0.2 * at45["digital"], rel=1e-12)
    assert at7["memory"] == pytest.approx(0.2 * at45["memory"], rel=1e-12)


def test_time_multiplexed_constraints_are_chip_properties() -> None:
    backend = load_backend("mzi-realistic")
    huge = _mlp(2048, 1024, shape=(1, 28, 28))  # 3.7 M weights: 58,624 tiles
    assert backend.check(huge) == []  # any network runs on the chip, just slower
    p = backend.params  # type: ignore[attr-defined]
    assert energy.total_mzis(huge, p) == 16 * 64
    assert energy.total_shifters(huge, p) == 16 * 136


@pytest.mark.parametrize(
    ("overrides", "constraint", "actual"),
    [
        (["cores=600"], "max_mzis", 600 * 64),
        (["cores=600", "max_mzis=null"], "max_phase_shifters", 600 * 136),
        (["cores=512", "max_chip_power_w=null", "adc_bits=16"], "max_optical_power_mw", None),
        (["phase_shifter_p_pi_mw=40"], "max_chip_power_w", None),
    ],
)
def test_each_chip_constraint_trips(overrides: list[str], constraint: str, actual: float | None) -> None:
    backend = load_backend("mzi-worst", overrides)
    violations = {v.constraint: v for v in backend.check(_mnist_mlp())}
    assert constraint in violations, violations
    v = violations[constraint]
    assert v.actual > v.limit
    if actual is not None:
        assert v.actual == actual
    p = backend.params  # type: ignore[attr-defined]
    if constraint == "max_optical_power_mw":
        assert v.actual == pytest.approx(512 * 8 * (energy.port_power_mw(p) + energy.reference_power_mw(p)))


def test_chip_power_by_hand_and_the_worst_case_heaters() -> None:
    p = _params("mzi-worst")
    dac6, adc6 = 3.57 * (64 / 7) / (256 / 9), 1.48 * 6 / 8
    heaters = 16 * 136 * 25e-3
    lasers = 128 * (energy.port_power_mw(p) + energy.reference_power_mw(p)) * 1e-3 / 0.2
    converters = 128 * (dac6 + 0.45) * 1e-12 * 1e10 + 128 * (adc6 * 1e-12 * 1e10 + 3e-3)
    assert energy.chip_power_w(_mnist_mlp(), p) == pytest.approx(heaters + lasers + converters, rel=1e-12)
    assert heaters + lasers + converters < 80
    # weight-stationary, the digits MLP's 80 tiles hold 80 x 136 heaters at 25 mW: 272 W, over the 80 W budget
    digits_mlp = analyze(load_architecture("examples/mlp_digits.json"), (1, 8, 8), 10)
    stationary = load_backend("mzi-worst", ["mapping=weight_stationary"])
    violations = {v.constraint: v for v in stationary.check(digits_mlp)}
    assert violations["max_chip_power_w"].actual > 272
