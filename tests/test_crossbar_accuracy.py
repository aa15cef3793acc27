"""Crossbar accuracy trends on a trained digits MLP (trained once per module, a few epochs): every non-ideality
lowers accuracy as it grows, drift lowers it with t_inference and global drift compensation recovers part."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uhnas.arch import parse_architecture
from uhnas.arch.build import Network, build
from uhnas.data import Dataset, load_dataset
from uhnas.evaluate import noisy_accuracy
from uhnas.hardware.registry import load_backend
from uhnas.train import TrainConfig, train

DRAWS = 16
TOLERANCE = 0.01  # accuracy may rise by this much between rungs of a ladder (Monte-Carlo / quantisation luck)
MLP = {
    "layers": [
        {"type": "flatten"},
        {"type": "linear", "out_features": 32},
        {"type": "activation", "function": "relu"},
        {"type": "linear", "out_features": 10},
    ]
}


@pytest.fixture(scope="module")
def trained() -> tuple[Network, Dataset]:
    data = load_dataset("digits", device="cpu")
    model = build(parse_architecture(MLP), data.input_shape, data.num_classes, seed=0)
    train(model, data, TrainConfig(epochs=4, batch_size=128, lr=3e-3))
    return model.eval(), data


def _accuracy(trained: tuple[Network, Dataset], preset: str, overrides: dict[str, Any]) -> float:
    model, data = trained
    backend = load_backend(preset, overrides)
    realized = backend.realize(model, DRAWS, torch.Generator().manual_seed(0))
    x, y = torch.cat([data.x_train, data.x_val]), torch.cat([data.y_train, data.y_val])
    return float(noisy_accuracy(realized, x, y).mean())


LADDERS: dict[str, list[Any]] = {
    "prog_noise_scale": [0.0, 3.0, 8.0],
    "read_noise_scale": [0.0, 4.0, 10.0],
    "d2d_std": [0.0, 0.3, 0.6],
    "weight_noise": [0.0, 0.15, 0.4],
    "stuck_on_rate": [0.0, 0.02, 0.08],
    "stuck_off_rate": [0.0, 0.1, 0.3],
    "conductance_levels": [None, 3, 2],
    "dac_bits": [None, 3, 2],
    "adc_bits": [None, 4, 3],
    "output_noise": [0.0, 1.0, 3.0],
    "drift_scale": [0.0, 2.0, 4.0],
}


@pytest.mark.parametrize("knob", sorted(LADDERS))
def test_accuracy_falls_with_each_nonideality(trained: tuple[Network, Dataset], knob: str) -> None:
    """One non-ideality at a time on the ideal chip: accuracy never rises (beyond luck) and falls in the end."""
    values = [_accuracy(trained, "crossbar-ideal", {knob: value}) for value in LADDERS[knob]]
    assert all(b <= a + TOLERANCE for a, b in zip(values, values[1:])), (knob, values)
    assert values[-1] < values[0] - 0.02, (knob, values)


def test_drift_lowers_accuracy_and_compensation_recovers(trained: tuple[Network, Dataset]) -> None:
    """PCM drift (exaggerated 3x so a small MLP feels it): accuracy falls from 1 s to one month; global drift
    compensation restores the layers' scale against their digital biases and recovers part of the loss."""
    base = {"drift_scale": 3.0, "drift_compensation": False}
    times = [1.0, 86400.0, 2592000.0]
    drifted = [_accuracy(trained, "crossbar-ideal", {**base, "t_inference": t}) for t in times]
    assert all(b <= a + TOLERANCE for a, b in zip(drifted, drifted[1:])), drifted
    assert drifted[-1] < drifted[0] - 0.02, drifted
    compensated = _accuracy(trained, "crossbar-ideal", {**base, "t_inference": times[-1], "drift_compensation": True})
    assert compensated > drifted[-1] + 0.01, (compensated, drifted)


def test_presets_rank_as_named(trained: tuple[Network, Dataset]) -> None:
    """Ideal >= realistic >= worst, and the realistic chip keeps most of the clean accuracy."""
    ideal = _accuracy(trained, "crossbar-ideal", {})
    realistic = _accuracy(trained, "pcm-realistic", {})
    worst = _accuracy(trained, "pcm-worst", {})
    assert ideal + TOLERANCE >= realistic >= worst - TOLERANCE
    assert realistic > ideal - 0.1
