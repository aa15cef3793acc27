"""Fast in-memory training and evaluation: the whole dataset is one device-resident tensor, no DataLoader.

Each epoch draws a seeded permutation, gathers the shuffled dataset once and slices it into batch views, so a step
costs one forward, one backward and one torch.optim.Adam update (fused where torch has the kernel). Losses stay on
the device; finiteness is checked every FINITE_CHECK_EVERY steps (one host sync each), so a diverging candidate fails
cleanly instead of crashing.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from uhnas.config import TrainingHyperparameters
from uhnas.data import Dataset

__all__ = ["Forward", "TrainConfig", "TrainResult", "evaluate_accuracy", "train"]

Forward = Callable[[nn.Module, Tensor], Tensor]  # (model, batch) -> logits

FINITE_CHECK_EVERY = 64  # steps between non-finite loss checks; each check is one device-to-host sync
EVAL_BATCH_SIZE = 2048  # samples per evaluation batch
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults
ADAM_EPS = 1e-8  # torch.optim.Adam default
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed accepts non-negative seeds up to this


class TrainConfig(TrainingHyperparameters):
    """The hyper-parameters of one training run (`uhnas.config.TrainingHyperparameters`) and its seed."""

    seed: int = Field(default=0, ge=0, le=MAX_SEED)  # initial weights, batch order, noise samples


@dataclass
class TrainResult:
    """Outcome of one training run; a failed run has accuracy 0 and says why."""

    accuracy: float  # validation accuracy, 0..1
    test_accuracy: float  # 0..1
    final_loss: float  # mean training loss of the last epoch run (non-finite when failed)
    train_seconds: float  # wall time of the training loop, evaluation excluded
    epochs_run: int  # epochs completed with finite losses
    samples_per_second: float  # training samples processed / train_seconds
    failed: bool = False
    reason: str | None = None


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    forward: Forward | None = None,
    eval_forward: Forward | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train `model` in place with Adam and cross-entropy, then measure validation and test accuracy.

    `forward(model, x)` computes the logits of a training batch (default `model(x)`): noise-aware training passes
    one that samples hardware non-idealities. Evaluation uses `eval_forward`, default plain `model(x)`.
    The run is deterministic on CPU for a given seed and initial weights: the batch order comes from a generator
    seeded with `config.seed`, and the global RNG (dropout, ...) is seeded with it inside a fork, then restored.
    A non-finite loss stops training and returns failed=True with the epoch and step (both 1-based).
    """
    target = torch.device(device) if device is not None else data.x_train.device
    x_train, y_train = data.x_train.to(target), data.y_train.to(target)
    if len(y_train) == 0:
        raise ValueError(f"dataset {data.name!r} has no training samples")
    model.to(target)
    with _fast_memory_format(model, target):
        step = _make_stepper(model, config, target)
        with torch.random.fork_rng(devices=_rng_devices(target)):
            torch.manual_seed(config.seed)
            order = torch.Generator(device=target).manual_seed(config.seed)
            model.train()
            start = time.perf_counter()
            epochs_run, samples, epoch_loss, failure = _run_epochs(
                model, step, forward or _plain_forward, x_train, y_train, config, order
            )
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)  # the trained model carries no gradients of its last step
        if failure is not None:
            model.eval()
            return TrainResult(0.0, 0.0, float("nan"), seconds, epochs_run, _rate(samples, seconds), True, failure)
        accuracy = evaluate_accuracy(model, data.x_val.to(target), data.y_val.to(target), forward=eval_forward)
        test_accuracy = evaluate_accuracy(model, data.x_test.to(target), data.y_test.to(target), forward=eval_forward)
    return TrainResult(accuracy, test_accuracy, epoch_loss, seconds, epochs_run, _rate(samples, seconds))


@contextlib.contextmanager
def _fast_memory_format(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run conv models channels-last on CPU (pooling and convolution are up to 5x faster), then restore NCHW.

    Restoring matters: code downstream (hardware mapping) may `.view()` conv weights, which needs NCHW strides.
    """
    convolutional = device.type == "cpu" and any(p.dim() == 4 for p in model.parameters())
    if not convolutional:
        yield
        return
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; stubs lack it
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA device indices whose RNG state `fork_rng` must save and restore (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _rate(samples: int, seconds: float) -> float:
    """Samples per second, infinite for an unmeasurably short run."""
    return samples / seconds if seconds > 0 else float("inf")


def _plain_forward(model: nn.Module, x: Tensor) -> Tensor:
    """Default forward: the model as written."""
    return model(x)


class _Stepper(Protocol):
    """Turns a batch loss into one optimizer update."""

    def __call__(self, loss: Tensor) -> None: ...


class _Adam:
    """torch.optim.Adam driven the usual way: zero the gradients, backpropagate, step.

    The fused kernel (`fused=True`, CPU since torch 2.4) where this torch has one for the parameters, else torch's
    default implementation; both compute the same update. bench/train.py --optimizers measured driving the fused
    kernel directly, without the Optimizer bookkeeping: 1.2x faster on the geometric mean over its models, below
    the 1.3x that would justify depending on torch's private kernel signature, so the public optimizer is used.
    """

    def __init__(self, params: Sequence[Tensor], lr: float, weight_decay: float, *, fused: bool) -> None:
        """Adam with torch's defaults for betas and eps."""
        self.fused = fused
        self.optimizer = torch.optim.Adam(
            params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=weight_decay, fused=True if fused else None
        )

    def __call__(self, loss: Tensor) -> None:
        """Backpropagate `loss` and apply one Adam update (parameters without a gradient are skipped)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _make_stepper(model: nn.Module, config: TrainConfig, device: torch.device) -> _Stepper:
    """Adam over the model's trainable parameters: fused where torch has a fused kernel for them."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    fused = all(p.is_floating_point() for p in params) and _has_fused_adam(device)
    return _Adam(params, config.lr, config.weight_decay, fused=fused)


@functools.cache
def _has_fused_adam(device: torch.device) -> bool:
    """Whether this torch build has a fused Adam kernel for the device (CPU needs torch >= 2.4).

    torch checks the device when the optimizer is built (older releases) or at its first step (newer ones) and
    raises RuntimeError if it has no kernel: one step on a probe parameter answers both.
    """
    probe = torch.zeros(1, device=device, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        torch.optim.Adam([probe], lr=0.0, fused=True).step()
    except RuntimeError:
        return False
    return True


def _run_epochs(
    model: nn.Module,
    step: _Stepper,
    step_forward: Forward,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    order: torch.Generator,
) -> tuple[int, int, float, str | None]:
    """The training loop; returns (epochs completed, samples processed, last epoch's mean loss, failure reason)."""
    samples = 0
    losses: list[Tensor] = []
    for epoch in range(1, config.epochs + 1):
        permutation = torch.randperm(len(y), generator=order, device=x.device)
        x_batches = x.index_select(0, permutation).split(config.batch_size)
        y_batches = y.index_select(0, permutation).split(config.batch_size)
        losses, bad_step = _run_epoch(model, step, step_forward, x_batches, y_batches)
        samples += sum(len(yb) for yb in y_batches[: len(losses)])
        if bad_step is not None:
            return epoch - 1, samples, float("nan"), f"non-finite loss at epoch {epoch} step {bad_step + 1}"
    return config.epochs, samples, float(torch.stack(losses).mean()), None


def _run_epoch(
    model: nn.Module,
    step: _Stepper,
    step_forward: Forward,
    x_batches: tuple[Tensor, ...],
    y_batches: tuple[Tensor, ...],
) -> tuple[list[Tensor], int | None]:
    """One pass over the batches; returns the device-resident losses and the index of the first non-finite one."""
    losses: list[Tensor] = []
    checked = 0
    for xb, yb in zip(x_batches, y_batches, strict=True):
        loss = F.cross_entropy(step_forward(model, xb), yb)
        step(loss)
        losses.append(loss.detach())
        if len(losses) - checked == FINITE_CHECK_EVERY or len(losses) == len(y_batches):
            bad_step = _first_nonfinite(losses, checked)
            if bad_step is not None:
                return losses, bad_step
            checked = len(losses)
    return losses, None


def _first_nonfinite(losses: list[Tensor], start: int) -> int | None:
    """Index of the first NaN/inf loss at or after `start`, with a single host sync when all are finite."""
    finite = torch.isfinite(torch.stack(losses[start:]))
    if bool(finite.all()):
        return None
    return start + int(torch.nonzero(~finite)[0, 0])


def evaluate_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    forward: Forward | None = None,
) -> float:
    """Top-1 accuracy (0..1) of `model` on (x, y) in eval mode without autograd; restores the previous mode."""
    if len(y) == 0:
        raise ValueError("cannot evaluate accuracy on an empty set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    run = forward if forward is not None else _plain_forward
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            correct = torch.zeros((), dtype=torch.int64, device=y.device)
            for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
                correct += (run(model, xb).argmax(dim=1) == yb).sum()
            return int(correct) / len(y)
    finally:
        model.train(was_training)
