"""Benchmark: uhnas.train.train against a tutorial-style DataLoader loop on digits, same models, seeds and weights.

Run: python bench/train.py   (about 30 s on one loaded core). Prints samples/s of both, the speed ratio
ours/reference and both validation accuracies (mean over seeds, so the difference can be read against seed noise).

Run: python bench/train.py --optimizers   (about 40 s unloaded). Compares two ways to drive Adam in uhnas.train.train:
the public torch.optim.Adam(fused=True) that train() uses, and the same fused kernel called directly through
torch's private torch._fused_adam_ (no Optimizer bookkeeping, gradients from autograd.grad). Both run in this one
process, interleaved public/private/public/private, because a shared machine's speed drifts between minutes.
Prints samples/s of both, the ratio private/public and its geometric mean over the models (the private path is
worth its dependence on torch internals only from PRIVATE_WORTH_IT up: issue 11), both validation accuracies and
how far the final weights of the two differ (0 and 3/3 identical: the same kernel, the same update).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import uhnas.train as train_module
from uhnas.data import Dataset, load_dataset
from uhnas.train import TrainConfig, TrainResult, evaluate_accuracy, train

THREADS = 1  # torch intra-op threads: a single-core figure, fair on a shared machine
SEEDS = (0, 1, 2)  # each seed: fresh initial weights, shared by both loops
REPEATS = 2  # timed runs per seed and loop; the fastest counts (least disturbed by other processes)
CONFIG = TrainConfig(epochs=20, batch_size=64, lr=1e-3, weight_decay=0.0)
OPTIMIZER_REPEATS = 4  # --optimizers: interleaved public/private pairs per seed; the fastest of each counts
PRIVATE_WORTH_IT = 1.3  # geometric-mean speedup the private kernel must give to justify depending on it (issue 11)


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


class PrivateFusedAdam:
    """Adam through torch's private fused kernel, as uhnas.train did before issue 11; kept here to re-measure.

    Gradients come from torch.autograd.grad (no .grad accumulation, no zero_grad) and go straight to
    torch._fused_adam_, the kernel torch.optim.Adam(fused=True) calls; the update is the same.
    """

    def __init__(self, params: list[Tensor], lr: float, weight_decay: float) -> None:
        """Zeroed moments and step counters, laid out like the parameters."""
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]

    def __call__(self, loss: Tensor) -> None:
        """Backpropagate `loss` and apply one Adam update to the parameters that got a gradient."""
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None]
        if not used:
            return
        # the kernel reads gradient and parameter as flat memory: give each gradient its parameter's strides
        layout = [
            g
            if g.stride() == p.stride()
            else torch.empty_strided(p.shape, p.stride(), dtype=g.dtype, device=g.device).copy_(g)
            for g, p in ((grads[i], self.params[i]) for i in used)
        ]
        steps = [self.steps[i] for i in used]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [self.params[i] for i in used], layout, [self.exp_avgs[i] for i in used],
            [self.exp_avg_sqs[i] for i in used], [], steps,
            amsgrad=False, lr=self.lr, beta1=train_module.ADAM_BETAS[0], beta2=train_module.ADAM_BETAS[1],
            weight_decay=self.weight_decay, eps=train_module.ADAM_EPS, maximize=False,
        )  # fmt: skip


@contextlib.contextmanager
def private_adam() -> Iterator[None]:
    """Make uhnas.train.train step with PrivateFusedAdam (through its one stepper factory) for the duration."""
    public = train_module._make_stepper

    def make(model: nn.Module, config: TrainConfig, device: torch.device) -> PrivateFusedAdam:
        params = [p for p in model.parameters() if p.requires_grad]
        return PrivateFusedAdam(params, config.lr, config.weight_decay)

    train_module._make_stepper = make  # type: ignore[assignment]
    try:
        yield
    finally:
        train_module._make_stepper = public


def compare_optimizers(make: Callable[[], nn.Module], data: Dataset) -> dict[str, float]:
    """Best-of-OPTIMIZER_REPEATS samples/s of both Adam paths (median over SEEDS), accuracies, weight differences."""
    rates: dict[str, list[float]] = {"public": [], "private": []}
    accuracy: dict[str, list[float]] = {"public": [], "private": []}
    max_diff = 0.0
    identical = 0
    for seed in SEEDS:
        torch.manual_seed(seed)
        initial = make()
        config = TrainConfig(**{**CONFIG.__dict__, "seed": seed})
        best = {"public": 0.0, "private": 0.0}
        models: dict[str, nn.Module] = {}  # the last trained model of each path
        results: dict[str, TrainResult] = {}
        for _ in range(OPTIMIZER_REPEATS):
            for path in ("public", "private"):  # interleaved: both see the same drift of the machine's speed
                models[path] = copy.deepcopy(initial)
                with private_adam() if path == "private" else contextlib.nullcontext():
                    results[path] = train(models[path], data, config)
                best[path] = max(best[path], results[path].samples_per_second)
        for path in best:
            rates[path].append(best[path])
            accuracy[path].append(results[path].accuracy)
        pairs = zip(models["public"].parameters(), models["private"].parameters(), strict=True)
        diffs = [float((a.detach() - b.detach()).abs().max()) for a, b in pairs]
        max_diff = max(max_diff, *diffs)
        identical += all(d == 0.0 for d in diffs)
    return {
        "public": statistics.median(rates["public"]),
        "private": statistics.median(rates["private"]),
        "public_acc": statistics.mean(accuracy["public"]),
        "private_acc": statistics.mean(accuracy["private"]),
        "max_weight_diff": max_diff,
        "identical_seeds": identical,
    }


def main_optimizers(data: Dataset) -> None:
    """--optimizers: public torch.optim.Adam(fused=True) against the private fused kernel, one row per model."""
    if not hasattr(torch, "_fused_adam_"):
        print(f"torch {torch.__version__} has no torch._fused_adam_: nothing to compare")
        return
    print(
        f"uhnas.train Adam paths on digits, {CONFIG.epochs} epochs, batch {CONFIG.batch_size}, seeds {list(SEEDS)}, "
        f"torch {torch.__version__}, torch.set_num_threads({THREADS}). public = torch.optim.Adam(fused=True) "
        "(what train() uses), private = torch._fused_adam_ called directly."
    )
    print(
        f"Interleaved public/private x {OPTIMIZER_REPEATS} per seed in this process; each figure is the best of "
        f"{OPTIMIZER_REPEATS} (median over seeds)."
    )
    print(
        f"{'model':<10} {'public samples/s':>17} {'private samples/s':>18} {'private/public':>15} "
        f"{'public acc':>11} {'private acc':>12} {'max |dw|':>9} {'same w':>7}"
    )
    ratios = []
    for name, make in ARCHITECTURES.items():
        row = compare_optimizers(make, data)
        ratios.append(row["private"] / row["public"])
        print(
            f"{name:<10} {row['public']:>17,.0f} {row['private']:>18,.0f} {ratios[-1]:>14.2f}x "
            f"{row['public_acc']:>11.4f} {row['private_acc']:>12.4f} {row['max_weight_diff']:>9.1e} "
            f"{str(int(row['identical_seeds'])) + '/' + str(len(SEEDS)):>7}"
        )
    mean = statistics.geometric_mean(ratios)
    verdict = "keep the private path" if mean >= PRIVATE_WORTH_IT else "use the public optimizer"
    print(f"geometric-mean speedup private/public: {mean:.2f}x (threshold {PRIVATE_WORTH_IT}x: {verdict})")


def main() -> None:
    """Run every architecture and print one table row each (with --optimizers: the Adam comparison)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--optimizers", action="store_true", help="compare public and private fused Adam inside uhnas.train"
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    data = load_dataset("digits")
    if args.optimizers:
        main_optimizers(data)
        return
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
