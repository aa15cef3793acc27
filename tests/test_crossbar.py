"""Crossbar (PCM / RRAM) family: protocol conformance, the ideal limit, the device model's statistics, constraints
and energy against hand arithmetic. The accuracy-trend checks on a trained MLP are in test_crossbar_accuracy.py."""

from __future__ import annotations

import math

import pytest
import torch

from uhnas.arch import analyze, parse_architecture
from uhnas.arch.build import build, forward_draws
from uhnas.hardware.crossbar import CrossbarBackend, column_scales, sample_weights
from uhnas.hardware.crossbar.devices import programming_sigma
from uhnas.hardware.registry import available_backends, load_backend
from uhnas.hardware.testing import assert_conforms

PRESETS = ("pcm-realistic", "pcm-worst", "rram-realistic")
MLP = {
    "layers": [
        {"type": "flatten"},
        {"type": "linear", "out_features": 32},
        {"type": "activation", "function": "relu"},
        {"type": "linear", "out_features": 10},
    ]
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_presets_are_installed_with_sourced_constants() -> None:
    for name in (*PRESETS, "crossbar-ideal"):
        assert name in available_backends()
        card = load_backend(name).describe()
        assert card.family == "crossbar"
        assert all(str(c["source"]).strip() for c in card.constants.values())


@pytest.mark.parametrize("name", PRESETS)
def test_conforms(name: str) -> None:
    assert_conforms(load_backend(name), ideal=load_backend("crossbar-ideal"))


def test_ideal_limit_over_many_row_tiles() -> None:
    """Small tiles (several row tiles per layer, partial sums accumulated digitally) still give the network exactly."""
    ideal = load_backend("crossbar-ideal", {"tile_rows": 16, "tile_cols": 8})
    model = build(parse_architecture(MLP), (1, 8, 8), 10, seed=3).eval()
    x = torch.randn(9, 1, 8, 8, generator=_generator(1))
    with torch.no_grad():
        error = (ideal.realize(model, 2, _generator(0))(x) - model(x)).abs().max()
    assert float(error) < 1e-5


def test_draws_differ_and_are_vectorised() -> None:
    """Each draw is its own chip; the D-draw realisation is one batched sample (its first draw is a valid chip)."""
    backend = load_backend("pcm-realistic")
    matrix = torch.randn(12, 20, generator=_generator(0))
    weights, gain = sample_weights(matrix, backend.params, 5, _generator(1))
    assert weights.shape == (5, 12, 20) and gain.shape == (5, 1, 1)
    assert not torch.equal(weights[0], weights[1])


def test_programming_noise_matches_polynomial() -> None:
    """With programming noise alone, the spread of a cell programmed to g equals the preset polynomial sigma(g)."""
    p = load_backend("crossbar-ideal", {"prog_noise_scale": 1.0}).params
    matrix = torch.tensor([[1.0, 0.5, -0.5, 0.0]])  # normalised targets 1, 0.5, -0.5 (G- = 0.5) and 0
    weights, _ = sample_weights(matrix, p, 20000, _generator(2))
    measured = weights[:, 0, :3].std(0)
    expected = programming_sigma(torch.tensor([1.0, 0.5, 0.5]), p)
    # +-: the other cell of the pair sits at 0 S and adds sigma(0) clipped at 0 (a half-normal)
    half_normal_var = (1 - 1 / math.pi) * float(programming_sigma(torch.tensor(0.0), p)) ** 2
    predicted = (expected**2 + half_normal_var).sqrt()
    assert torch.allclose(measured, predicted, rtol=0.05), (measured, predicted)
    # sigma at g_max = 25 uS: (0.26348 + 1.9650 - 1.1731) uS / 25 uS
    assert math.isclose(float(expected[0]), (0.26348 + 1.9650 - 1.1731) / 25.0, rel_tol=1e-6)


def test_drift_follows_power_law_and_compensation_restores_scale() -> None:
    """Drift alone: G(t) / G(0) = ((t + t0) / t0)^-nu with nu ~ 0.049 at g_max; compensation's gain undoes it."""
    p = load_backend(
        "crossbar-ideal", {"drift_scale": 1.0, "t_inference": 2592000.0, "drift_compensation": True}
    ).params
    matrix = torch.ones(1, 64)
    weights, gain = sample_weights(matrix, p, 200, _generator(3))
    ratio = ((p.t_inference + p.drift_t0_s) / p.drift_t0_s) ** -0.049  # nu mean at g = g_max (clipped at 0.049)
    assert math.isclose(float(weights.median()), ratio, rel_tol=0.1)
    assert torch.allclose(gain.squeeze() * weights.mean((-2, -1)), torch.ones(200), rtol=1e-5)


def test_stuck_faults_rates() -> None:
    p = load_backend("crossbar-ideal", {"stuck_on_rate": 0.1, "stuck_off_rate": 0.2}).params
    matrix = torch.full((50, 50), 0.5)
    matrix[:, 0] = 1.0  # every row's scale is 1: the other targets are G+ = 0.5 g_max, G- = 0
    weights, _ = sample_weights(matrix, p, 40, _generator(4))
    values = weights[:, :, 1:].flatten()
    # 1 when G+ is stuck on and G- not; 0 when G+ is stuck off and G- not stuck on (G- stuck off changes nothing)
    assert math.isclose(float((values == 1.0).float().mean()), 0.1 * 0.9, abs_tol=0.01)
    assert math.isclose(float((values == 0.0).float().mean()), 0.2 * 0.9, abs_tol=0.01)


def test_training_programs_are_fresh_chips_with_gradients() -> None:
    backend = load_backend("pcm-realistic")
    model = build(parse_architecture(MLP), (1, 8, 8), 10, seed=0).train()
    x = torch.randn(6, 1, 8, 8, generator=_generator(5))
    generator = _generator(6)
    first = forward_draws(model, backend.training_programs(model, generator), 1, x)
    second = forward_draws(model, backend.training_programs(model, generator), 1, x)
    assert not torch.equal(first, second)
    first.sum().backward()
    assert all(layer.weight.grad is not None for layer in model.matmuls())
    assert load_backend("crossbar-ideal").training_programs(model, generator) is None


def test_tile_and_power_constraints() -> None:
    """A layer wider than the chip needs more tiles than it has; the violation is measured in tiles."""
    backend = load_backend("pcm-realistic", {"tile_rows": 8, "tile_cols": 8})
    wide = dict(MLP, layers=[MLP["layers"][0], {"type": "linear", "out_features": 128}, *MLP["layers"][2:]])
    summary = analyze(parse_architecture(wide), (1, 8, 8), 10)
    violations = {v.constraint: v for v in backend.check(summary)}
    assert violations["max_tiles"].actual == 8 * 16 + 16 * 2  # 64 -> 128 -> 10 on 8x8 tiles
    assert load_backend("pcm-realistic").check(summary) == []
    hot = load_backend("pcm-realistic", {"max_power_w": 1e-6})
    assert [v.constraint for v in hot.check(summary)] == ["max_power_w"]


def test_energy_by_hand_for_two_layer_mlp() -> None:
    """64 -> 32 -> 10 on 256x256 tiles (one tile per layer), priced component by component from the preset."""
    backend = load_backend("pcm-realistic")
    assert isinstance(backend, CrossbarBackend)
    p = backend.params
    summary = analyze(parse_architecture(MLP), (1, 8, 8), 10)
    report = backend.energy(summary)
    cells = 2 * (64 * 32 + 32 * 10)  # differential pairs, one MVM each
    cell_pj = 0.2**2 * (0.1 * 25e-6) * 133e-9 * 0.5 * 1e12  # V^2 x mean G x t_MVM x duty
    dac = 64 + 32  # inputs converted (one column tile per layer)
    adc = 32 + 10  # outputs converted (one row tile per layer)
    ops = 32  # the ReLU
    values = 64 + 64 + 64 + 32 + 32 + 32 + 32 + 10  # flatten, linear, relu, linear: inputs + outputs
    expected = {
        "array": cells * cell_pj,
        "dac": dac * 3.57,
        "adc": adc * 1.48,
        "digital": dac * (0.4 + 1.1) + adc * (1.1 + 0.4) + ops * 0.4,
        "memory": values * 1 * 0.8275,
    }
    assert p.dac_bits == p.dac_reference_bits == 8 and p.adc_bits == 8
    # flatten moves no data (DATA_FREE_LAYERS): drop its input and output
    expected["memory"] -= (64 + 64) * 1 * 0.8275
    for key, value in expected.items():
        assert math.isclose(report.breakdown_nj[key] * 1000, value, rel_tol=1e-9), key
    assert math.isclose(report.total_nj, sum(report.breakdown_nj.values()))
    assert report.latency_ns == 2 * 133.0
    assert report.assumptions["tiles"] == 2


def test_converter_energy_scaling() -> None:
    """DAC energy scales by 2^b / (b + 1), ADC energy linearly in bits, from the reference bits."""
    summary = analyze(parse_architecture(MLP), (1, 8, 8), 10)
    base = load_backend("pcm-realistic").energy(summary).breakdown_nj
    six = load_backend("pcm-realistic", {"dac_bits": 6, "adc_bits": 6}).energy(summary).breakdown_nj
    assert math.isclose(six["dac"] / base["dac"], (2**6 / 7) / (2**8 / 9))
    assert math.isclose(six["adc"] / base["adc"], 6 / 8)


def test_output_scale_is_per_column() -> None:
    matrix = torch.tensor([[0.5, -2.0], [0.0, 0.0], [3.0, 1.0]])
    assert torch.equal(column_scales(matrix), torch.tensor([2.0, 1.0, 3.0]))
