"""The one place where architecture, data, training and hardware meet: score one candidate.

evaluate() validates the architecture for the dataset, asks the backend for violations and energy,
trains (optionally noise-aware: the backend's non-idealities sampled in every training forward pass),
then measures validation accuracy clean and under `mc` Monte-Carlo draws of the device (mean, std,
5th percentile) and test accuracy. Failures (NaN loss, impossible shapes) come back as data.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from uhnas.arch import Architecture, ArchitectureError, analyze, arch_hash
from uhnas.arch.build import Network, build, forward_draws
from uhnas.data import Dataset, load_dataset, resolve_device
from uhnas.hardware.base import Backend, RealizedModel
from uhnas.hardware.card import total_violation
from uhnas.hardware.registry import load_backend
from uhnas.seeding import derive_seed, torch_generator
from uhnas.train import TrainConfig, train

MC_ROWS_PER_CHUNK = 1 << 15  # draws x samples per realised forward pass: bounds memory of the MC evaluation
MC_ROWS_PER_CHUNK_CPU = 1 << 12  # ... on a CPU: activations of a few MB are reused from the heap instead of being
#   mapped afresh (page faults were ~10% of the example CNN's MC scoring at 1 << 15;
#   128 images x 32 draws measured best)
MC_ELEMENTS_PER_CHUNK = 1 << 26  # ... and at most this many elements (256 MB in float32) in its widest tensor: a
#   wide conv on 28x28 inputs unfolds to ~10^6 values per sample and draw (4,096 rows of them needed > 15 GB)
P5 = 0.05  # the low quantile reported as `p5`


@dataclass(frozen=True)
class NoisyAccuracy:
    """Accuracy over Monte-Carlo draws of the device's non-idealities."""

    mean: float
    std: float
    p5: float
    draws: int


@dataclass
class Evaluation:
    """Everything measured about one candidate on one backend; JSON-ready via to_dict()."""

    arch_hash: str
    backend: str
    dataset: str
    params: int = 0
    macs: int = 0
    accuracy: float = 0.0  # clean validation accuracy, 0..1
    test_accuracy: float = 0.0
    noisy_accuracy: NoisyAccuracy | None = None
    noisy_test_accuracy: float | None = None  # mean over draws
    energy_nj: float = math.nan
    energy_breakdown_nj: dict[str, float] = field(default_factory=dict)
    latency_ns: float | None = None
    energy_assumptions: dict[str, Any] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)
    total_violation: float = 0.0
    final_loss: float = math.nan
    epochs: int = 0
    seed: int = 0
    noise_aware: bool = False
    train_seconds: float = 0.0
    mc_seconds: float = 0.0
    failed: bool = False
    reason: str | None = None

    @property
    def feasible(self) -> bool:
        """No physical constraint violated."""
        return self.total_violation == 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (noisy_accuracy as {mean, std, p5, draws}; feasible included)."""
        data = asdict(self)
        data["feasible"] = self.feasible
        return data


def mc_chunk(realized: RealizedModel, device: torch.device) -> int:
    """Samples per realised forward pass: at most MC_ROWS_PER_CHUNK(_CPU) draws x samples, and at most
    MC_ELEMENTS_PER_CHUNK elements in the pass's widest tensor (the network's widest per sample x draws x samples),
    counting the draws the pass computes (one for a deterministic device)."""
    draws = realized.computed_draws
    rows = MC_ROWS_PER_CHUNK_CPU if device.type == "cpu" else MC_ROWS_PER_CHUNK
    widest = realized.model.widest_per_sample() if isinstance(realized.model, Network) else 0
    by_elements = MC_ELEMENTS_PER_CHUNK // (draws * widest) if widest else rows
    return max(1, min(rows // draws, by_elements))


def noisy_accuracy(realized: RealizedModel, x: Tensor, y: Tensor) -> Tensor:
    """Per-draw accuracy (draws,) of a realised model, in memory-bounded chunks of samples (`mc_chunk`)."""
    draws = realized.draws
    correct = torch.zeros(draws, dtype=torch.float64, device=x.device)
    chunk = mc_chunk(realized, x.device)
    with torch.inference_mode():
        for start in range(0, len(y), chunk):
            logits = realized(x[start : start + chunk])
            correct += (logits.argmax(-1) == y[start : start + chunk]).sum(-1)
    return correct / len(y)


def summarize_draws(per_draw: Tensor) -> NoisyAccuracy:
    """Mean, std and 5th percentile over draws."""
    values = per_draw.double().cpu()
    std = float(values.std()) if len(values) > 1 else 0.0
    return NoisyAccuracy(float(values.mean()), std, float(torch.quantile(values, P5)), len(values))


def _training_forward(backend: Backend, generator: torch.Generator):
    """A train() forward hook that runs each batch through one freshly sampled device draw."""

    def forward(model: torch.nn.Module, x: Tensor) -> Tensor:
        network = cast(Network, model)  # train() hands back the network evaluate() built
        programs = backend.training_programs(network, generator)
        if not programs:
            return network(x)
        return forward_draws(network, programs, 1, x)[0]

    return forward


def evaluate(
    arch: Architecture,
    dataset: str | Dataset = "digits",
    backend: str | Backend = "ideal",
    *,
    train_config: TrainConfig | None = None,
    mc: int = 32,
    noise_aware: bool = False,
    device: str = "auto",
    data_dir: str | None = None,
    train_infeasible: bool = True,
) -> Evaluation:
    """Train and score one architecture on one backend (see module docstring)."""
    config = train_config or TrainConfig()
    data = (
        dataset
        if isinstance(dataset, Dataset)
        else load_dataset(dataset, data_dir=data_dir, device=resolve_device(device))
    )
    hw = load_backend(backend) if isinstance(backend, str) else backend
    key = arch_hash(arch)
    result = Evaluation(
        arch_hash=key,
        backend=hw.name,
        dataset=data.name,
        epochs=config.epochs,
        seed=config.seed,
        noise_aware=noise_aware,
    )
    try:
        summary = analyze(arch, data.input_shape, data.num_classes)
    except ArchitectureError as error:
        result.failed, result.reason = True, f"invalid architecture: {error}"
        return result
    result.params, result.macs = summary.params, summary.macs
    violations = hw.check(summary)
    result.violations = [v.to_dict() for v in violations]
    result.total_violation = total_violation(violations)
    report = hw.energy(summary)
    result.energy_nj, result.energy_breakdown_nj = report.total_nj, dict(report.breakdown_nj)
    result.latency_ns, result.energy_assumptions = report.latency_ns, dict(report.assumptions)
    if not result.feasible and not train_infeasible:
        result.reason = "not trained: violates physical constraints"
        return result

    model = build(arch, data.input_shape, data.num_classes, seed=derive_seed(config.seed, key, "init")).to(data.device)
    forward = (
        _training_forward(hw, torch_generator(config.seed, key, "train-noise", device=data.device))
        if noise_aware
        else None
    )
    trained = train(model, data, config, forward=forward)
    result.accuracy, result.test_accuracy = trained.accuracy, trained.test_accuracy
    result.final_loss, result.train_seconds = trained.final_loss, trained.train_seconds
    if trained.failed:
        result.failed, result.reason = True, trained.reason
        return result
    if mc > 0:
        start = time.perf_counter()
        model.eval()
        realized = hw.realize(
            model, mc, torch_generator(config.seed, key, "mc", device=data.device)
        )  # the same chips for both splits
        result.noisy_accuracy = summarize_draws(noisy_accuracy(realized, data.x_val, data.y_val))
        result.noisy_test_accuracy = float(noisy_accuracy(realized, data.x_test, data.y_test).mean())
        result.mc_seconds = time.perf_counter() - start
    return result


__all__ = ["Evaluation", "NoisyAccuracy", "evaluate", "noisy_accuracy", "summarize_draws"]
