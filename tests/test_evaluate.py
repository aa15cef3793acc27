"""evaluate(): training, Monte-Carlo statistics, energy and failures as data."""

from __future__ import annotations

import math

import pytest
import torch

from uhnas.arch import load_architecture, parse_architecture
from uhnas.evaluate import evaluate, summarize_draws
from uhnas.hardware.registry import load_backend
from uhnas.train import TrainConfig


def test_example_mlp_on_the_ideal_backend():
    result = evaluate(
        load_architecture("examples/mlp_digits.json"), "digits", "ideal", train_config=TrainConfig(epochs=10), mc=4
    )
    assert not result.failed and result.feasible
    assert result.accuracy >= 0.93
    assert result.noisy_accuracy.mean == pytest.approx(result.accuracy)  # ideal: noise-free
    assert result.noisy_accuracy.std == 0.0
    assert result.energy_nj == pytest.approx(result.macs * 1.0 / 1000)  # 1 pJ per MAC, nothing else
    data = result.to_dict()
    assert {
        "arch_hash",
        "params",
        "macs",
        "accuracy",
        "test_accuracy",
        "train_seconds",
        "noisy_accuracy",
        "energy_breakdown_nj",
        "feasible",
    } <= set(data)


def test_same_seed_same_result_other_seed_differs():
    arch = load_architecture("examples/mlp_digits.json")
    runs = [evaluate(arch, "digits", "ideal", train_config=TrainConfig(epochs=2, seed=s), mc=0) for s in (0, 0, 1)]
    assert runs[0].final_loss == runs[1].final_loss
    assert runs[0].final_loss != runs[2].final_loss


def test_impossible_architecture_is_a_failed_result_not_an_exception():
    arch = parse_architecture({"layers": [{"type": "linear", "out_features": 10}]})
    result = evaluate(arch, "digits", "ideal")
    assert result.failed and "layer 0 (linear): input is 1x8x8" in result.reason


def test_diverging_training_is_a_failed_result():
    result = evaluate(
        load_architecture("examples/mlp_digits.json"),
        "digits",
        "ideal",
        train_config=TrainConfig(epochs=2, lr=1e30),
        mc=2,
    )
    assert result.failed and "non-finite loss" in result.reason


def test_infeasible_candidates_can_skip_training():
    backend = load_backend("gpu-b200-fp16", ["memory_bytes=100"])
    result = evaluate(load_architecture("examples/mlp_digits.json"), "digits", backend, train_infeasible=False)
    assert not result.feasible and result.train_seconds == 0 and "not trained" in result.reason
    assert result.violations[0]["constraint"] == "weight memory" and result.total_violation > 0


def test_quantisation_aware_training_runs():
    backend = load_backend("ideal", ["precision=int8"])
    result = evaluate(
        load_architecture("examples/mlp_digits.json"),
        "digits",
        backend,
        train_config=TrainConfig(epochs=3),
        mc=2,
        noise_aware=True,
    )
    assert not result.failed and result.noise_aware and result.accuracy > 0.8


def test_summarize_draws_by_hand():
    stats = summarize_draws(torch.tensor([0.9, 0.8, 1.0, 0.7]))
    assert stats.mean == pytest.approx(0.85)
    assert stats.std == pytest.approx(math.sqrt(((0.05**2) * 2 + 0.15**2 * 2) / 3))
    assert stats.p5 == pytest.approx(0.7 + 0.15 * 0.1)  # linear interpolation at 5 % of 3 gaps
    assert stats.draws == 4


def test_mc_chunks_are_bounded_by_the_widest_tensor_and_do_not_change_the_result(monkeypatch):
    """A wide conv on a 28x28 input unfolds to ~10^6 values per sample and draw: the MC pass takes few samples at a
    time (a 4,096-row pass needed > 15 GB); a small network keeps the row budget; the accuracies do not depend on
    the chunking (a backend without per-inference noise, whose draws do not depend on the chunk boundaries)."""
    import uhnas.evaluate as ev
    from uhnas.arch.build import build
    from uhnas.hardware.base import RealizedModel

    wide = parse_architecture({"layers": [
        {"type": "conv2d", "out_channels": 64, "kernel": 3, "padding": 1}, {"type": "activation", "function": "relu"},
        {"type": "conv2d", "out_channels": 16, "kernel": 5, "padding": 2}, {"type": "flatten"},
        {"type": "linear", "out_features": 10}]})  # fmt: skip
    model = build(wide, (1, 28, 28), 10, seed=0).eval()
    assert model.widest_per_sample() == 64 * 5 * 5 * 28 * 28  # the second conv's unfolded windows
    digital = load_backend("gpu-b200-fp16").realize(model, 4, torch.Generator().manual_seed(0))
    realized = RealizedModel(model, digital.programs, 4)  # every draw computed (as a noisy device does)
    chunk = ev.mc_chunk(realized, torch.device("cpu"))
    assert 4 * chunk * model.widest_per_sample() <= ev.MC_ELEMENTS_PER_CHUNK < 4 * (chunk + 1) * 1_254_400
    assert ev.mc_chunk(digital, torch.device("cpu")) == ev.MC_ELEMENTS_PER_CHUNK // 1_254_400  # computes 1 draw
    small = build(load_architecture("examples/mlp_digits.json"), (1, 8, 8), 10, seed=0).eval()
    realized_small = RealizedModel(small, load_backend("gpu-b200-fp16").realize(small, 32, None).programs, 32)
    assert ev.mc_chunk(realized_small, torch.device("cpu")) == ev.MC_ROWS_PER_CHUNK_CPU // 32

    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    whole = ev.noisy_accuracy(realized_small, x, y)
    monkeypatch.setattr(ev, "MC_ELEMENTS_PER_CHUNK", 32 * 7 * small.widest_per_sample())  # 7 samples per pass
    assert ev.mc_chunk(realized_small, torch.device("cpu")) == 7
    assert torch.equal(ev.noisy_accuracy(realized_small, x, y), whole)
