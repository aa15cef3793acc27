"""Benchmark: uhnas.train.train against a tutorial-style DataLoader loop on digits, same models, seeds and weights.

Run: python bench/train.py   (about 30 s on one loaded core). Prints samples/s of both, the speed ratio
ours/reference and both validation accuracies (mean over seeds, so the difference can be read against seed noise).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uhnas.data import Dataset, load_dataset
from uhnas.train import TrainConfig, evaluate_accuracy, train

THREADS = 1  # torch intra-op threads: a single-core figure, fair on a shared machine
SEEDS = (0, 1, 2)  # each seed: fresh initial weights, shared by both loops
REPEATS = 2  # timed runs per seed and loop; the fastest counts (least disturbed by other processes)
CONFIG = TrainConfig(epochs=20, batch_size=64, lr=1e-3, weight_decay=0.0)


def small_mlp() -> nn.Module:
    """64 -> 64 -> 10 with ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def wide_mlp() -> nn.Module:
    """64 -> 512 -> 512 -> 10 with ReLU."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


def small_cnn() -> nn.Module:
    """conv 8ch 3x3 -> ReLU -> maxpool 2 -> conv 16ch 3x3 -> ReLU -> flatten -> linear 10, on 1x8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "small-mlp": small_mlp,
    "wide-mlp": wide_mlp,
    "small-cnn": small_cnn,
}


def reference_train(model: nn.Module, data: Dataset, config: TrainConfig) -> float:
    """The loop a tutorial writes: DataLoader(shuffle=True) over a TensorDataset, Adam, loss.item() per step.

    Returns the wall time of the training loop in seconds.
    """
    torch.manual_seed(config.seed)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = time.perf_counter()
    model.train()
    for _ in range(config.epochs):
        running_loss = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return time.perf_counter() - start


def measure(name: str, make: Callable[[], nn.Module], data: Dataset) -> dict[str, float]:
    """Best-of-REPEATS samples/s and mean validation accuracy of both loops over SEEDS."""
    samples = CONFIG.epochs * data.sizes["train"]
    ours_rate, ref_rate, ours_acc, ref_acc = [], [], [], []
    for seed in SEEDS:
        torch.manual_seed(seed)
        initial = make()
        config = TrainConfig(**{**CONFIG.__dict__, "seed": seed})
        best_ours = best_ref = 0.0
        for _ in range(REPEATS):
            ours_model, ref_model = copy.deepcopy(initial), copy.deepcopy(initial)
            result = train(ours_model, data, config)
            ref_seconds = reference_train(ref_model, data, config)
            best_ours = max(best_ours, result.samples_per_second)
            best_ref = max(best_ref, samples / ref_seconds)
        ours_rate.append(best_ours)
        ref_rate.append(best_ref)
        ours_acc.append(result.accuracy)
        ref_acc.append(evaluate_accuracy(ref_model, data.x_val, data.y_val))
    return {
        "ours": statistics.median(ours_rate),
        "ref": statistics.median(ref_rate),
        "ours_acc": statistics.mean(ours_acc),
        "ref_acc": statistics.mean(ref_acc),
        "acc_sd": statistics.stdev(ours_acc + ref_acc),
    }


def main() -> None:
    """Run every architecture and print one table row each."""
    torch.set_num_threads(THREADS)
    data = load_dataset("digits")
    print(
        f"uhnas.train vs tutorial DataLoader loop on digits ({data.sizes['train']} train / {data.sizes['val']} val), "
        f"{CONFIG.epochs} epochs, batch {CONFIG.batch_size}, lr {CONFIG.lr}, seeds {list(SEEDS)}, "
        f"torch {torch.__version__}, torch.set_num_threads({THREADS}) for a single-core figure."
    )
    print(
        "Note: the machine may be loaded by other processes; each figure is the best of "
        f"{REPEATS} runs (median over seeds), the ratio is measured within this run."
    )
    print(
        f"{'model':<10} {'ours samples/s':>15} {'ref samples/s':>14} {'speedup':>8} "
        f"{'ours val acc':>13} {'ref val acc':>12} {'acc sd':>7}"
    )
    ratios = []
    for name, make in ARCHITECTURES.items():
        row = measure(name, make, data)
        ratios.append(row["ours"] / row["ref"])
        print(
            f"{name:<10} {row['ours']:>15,.0f} {row['ref']:>14,.0f} {ratios[-1]:>7.2f}x "
            f"{row['ours_acc']:>13.4f} {row['ref_acc']:>12.4f} {row['acc_sd']:>7.4f}"
        )
    print(f"geometric-mean speedup: {statistics.geometric_mean(ratios):.2f}x (goal >= 2x at equal accuracy)")


if __name__ == "__main__":
    main()
