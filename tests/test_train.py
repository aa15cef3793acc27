"""Fast trainer: learning, determinism, clean failure on non-finite loss, the forward hooks and public torch Adam."""

from __future__ import annotations

import copy
import inspect
import math
import re

import pytest
import torch
from torch import Tensor, nn

from uhnas import train as train_module
from uhnas.data import Dataset, load_dataset
from uhnas.train import TrainConfig, TrainResult, evaluate_accuracy, train

STEPS_PER_EPOCH = math.ceil(1077 / 64)  # digits training set at batch size 64


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)
    )


def test_mlp_learns_digits(digits: Dataset) -> None:
    result = train(mlp(), digits, TrainConfig(epochs=5))
    assert not result.failed and result.reason is None
    assert result.accuracy > 0.85 and result.test_accuracy > 0.85
    assert result.epochs_run == 5 and 0 < result.final_loss < 1.0
    assert result.train_seconds > 0 and result.samples_per_second > 0


def test_same_seed_same_result(digits: Dataset) -> None:
    initial = mlp()
    models = [copy.deepcopy(initial) for _ in range(3)]
    config = TrainConfig(epochs=2, seed=7)
    first, second = (train(m, digits, config) for m in models[:2])
    assert (first.final_loss, first.accuracy, first.test_accuracy) == (
        second.final_loss,
        second.accuracy,
        second.test_accuracy,
    )
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    other = train(models[2], digits, TrainConfig(epochs=2, seed=8))
    assert other.final_loss != first.final_loss


def test_dropout_is_seeded_and_global_rng_restored(digits: Dataset) -> None:
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    state = torch.get_rng_state()
    runs = [train(copy.deepcopy(initial), digits, TrainConfig(epochs=1, seed=3)) for _ in range(2)]
    assert runs[0].final_loss == runs[1].final_loss
    assert torch.equal(torch.get_rng_state(), state)


class NaNAfter(nn.Module):
    """Returns NaN logits from the given forward call on (1-based): a model that diverges at a known step."""

    def __init__(self, call: int) -> None:
        super().__init__()
        self.inner = mlp()
        self.call = call
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        logits = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.call:
                return logits * float("nan")
        return logits


@pytest.mark.parametrize(("call", "epoch", "step"), [(1, 1, 1), (3, 1, 3), (STEPS_PER_EPOCH + 2, 2, 2)])
def test_nonfinite_loss_fails_cleanly(digits: Dataset, call: int, epoch: int, step: int) -> None:
    result = train(NaNAfter(call), digits, TrainConfig(epochs=3))
    assert result.failed
    assert result.reason == f"non-finite loss at epoch {epoch} step {step}"
    assert result.epochs_run == epoch - 1 and result.accuracy == 0.0 and math.isnan(result.final_loss)


def test_huge_learning_rate_never_crashes(digits: Dataset) -> None:
    # Adam's step is bounded by lr, so the loss explodes (~1e18) without necessarily overflowing: either outcome
    # (a finite but useless model, or failed=True with a reason) is fine, a crash is not.
    result = train(mlp(), digits, TrainConfig(epochs=2, lr=1e10))
    assert isinstance(result, TrainResult)
    assert result.failed == (result.reason is not None)
    assert result.accuracy < 0.5


def test_forward_hook_runs_every_training_batch_only(digits: Dataset) -> None:
    calls: list[int] = []

    def counting(model: nn.Module, x: Tensor) -> Tensor:
        calls.append(len(x))
        return model(x)

    result = train(mlp(), digits, TrainConfig(epochs=3), forward=counting)
    assert len(calls) == 3 * STEPS_PER_EPOCH and sum(calls) == 3 * 1077
    assert not result.failed


def test_noisy_forward_changes_training(digits: Dataset) -> None:
    initial = mlp()
    generator = torch.Generator().manual_seed(0)

    def noisy(model: nn.Module, x: Tensor) -> Tensor:
        return model(x + torch.randn(x.shape, generator=generator))

    clean = train(copy.deepcopy(initial), digits, TrainConfig(epochs=2))
    noise = train(copy.deepcopy(initial), digits, TrainConfig(epochs=2), forward=noisy)
    assert noise.final_loss > clean.final_loss


def test_eval_forward_is_used_for_evaluation(digits: Dataset) -> None:
    def always_zero(model: nn.Module, x: Tensor) -> Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1.0
        return logits

    result = train(mlp(), digits, TrainConfig(epochs=1), eval_forward=always_zero)
    assert result.accuracy == pytest.approx(float((digits.y_val == 0).float().mean()))


def test_conv_model_trains_and_keeps_nchw_weights(digits: Dataset) -> None:
    model = cnn()
    result = train(model, digits, TrainConfig(epochs=3, lr=3e-3))
    assert not result.failed and result.accuracy > 0.5
    conv = model[0]
    assert conv.weight.is_contiguous() and conv.weight.view(4, -1).shape == (4, 9)


def test_training_steps_are_torch_optim_adam(digits: Dataset) -> None:
    """The stepper is torch.optim.Adam(fused=True) on CPU: its updates equal a hand-written Adam loop bit for bit."""
    config = TrainConfig(epochs=1, weight_decay=1e-2)
    model = mlp()
    reference = copy.deepcopy(model)
    params = list(reference.parameters())
    adam = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    stepper = train_module._make_stepper(model, config, torch.device("cpu"))
    assert isinstance(stepper, train_module._Adam) and stepper.fused
    x, y = digits.x_train[:64], digits.y_train[:64]
    for _ in range(5):
        adam.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        adam.step()
        stepper(nn.functional.cross_entropy(model(x), y))
    for ours, theirs in zip(model.parameters(), params, strict=True):
        assert torch.equal(ours, theirs)


def test_train_matches_the_readable_loop(digits: Dataset) -> None:
    """train() is the plain loop (seeded shuffle, forward, cross-entropy, Adam step) written out here, bit for bit."""
    config = TrainConfig(epochs=2, batch_size=50, lr=2e-3, weight_decay=1e-3, seed=5)
    initial = mlp()
    trained = copy.deepcopy(initial)
    result = train(trained, digits, config)
    model = copy.deepcopy(initial)
    adam = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    order = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        permutation = torch.randperm(len(digits.y_train), generator=order)
        losses = []
        for batch in permutation.split(config.batch_size):
            loss = nn.functional.cross_entropy(model(digits.x_train[batch]), digits.y_train[batch])
            adam.zero_grad()
            loss.backward()
            adam.step()
            losses.append(loss.detach())
    assert result.final_loss == float(torch.stack(losses).mean())
    for ours, theirs in zip(trained.parameters(), model.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    assert all(p.grad is None for p in trained.parameters())  # no gradients of the last step left behind


def test_no_private_torch_calls() -> None:
    """Training uses torch's public API only (issue 11: the private fused-kernel path was not worth its risk)."""
    source = inspect.getsource(train_module)
    assert re.findall(r"torch\._\w+", source) == []


def test_fused_kernel_probe() -> None:
    """The probe finds the CPU kernel (torch >= 2.4) and reports False for a device torch has none for."""
    assert train_module._has_fused_adam(torch.device("cpu"))
    assert not train_module._has_fused_adam(torch.device("meta"))


def test_fallback_adam_agrees_with_fused(digits: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    initial = mlp()
    fused = train(copy.deepcopy(initial), digits, TrainConfig(epochs=1))
    monkeypatch.setattr(train_module, "_has_fused_adam", lambda device: False)
    assert not train_module._make_stepper(mlp(), TrainConfig(), torch.device("cpu")).fused
    plain = train(copy.deepcopy(initial), digits, TrainConfig(epochs=1))
    assert plain.final_loss == pytest.approx(fused.final_loss, rel=1e-4)


def test_unused_parameter_is_left_alone(digits: Dataset) -> None:
    model = mlp()
    model.spare = nn.Parameter(torch.ones(3))
    assert not train(model, digits, TrainConfig(epochs=1)).failed
    assert torch.equal(model.spare.detach(), torch.ones(3))


def test_evaluate_accuracy_restores_mode(digits: Dataset) -> None:
    model = mlp()
    model.train()
    accuracy = evaluate_accuracy(model, digits.x_val, digits.y_val, batch_size=7)
    assert 0.0 <= accuracy <= 1.0 and model.training
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(model, digits.x_val[:0], digits.y_val[:0])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("batch_size", 0),
        ("batch_size", True),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("weight_decay", -1e-4),
        ("seed", -1),
    ],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"validation error for TrainConfig\n{field}\n"):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_model_without_parameters_is_rejected(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(nn.Flatten(), digits, TrainConfig(epochs=1))


def test_fused_update_handles_gradients_in_another_layout():
    """A forward whose weight gradient comes out column-major must train exactly like the plain forward."""
    from uhnas.data import load_dataset
    from uhnas.train import TrainConfig, train

    class Linear(torch.nn.Module):
        def __init__(self, transposed: bool) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.linspace(-0.1, 0.1, 640).reshape(10, 64))
            self.transposed = transposed

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.weight.t().contiguous().t().t() if self.transposed else self.weight.t()
            return x.flatten(1) @ w  # the first gives a gradient with strides (1, 10), the second (64, 1)

    data = load_dataset("digits")
    plain = train(Linear(False), data, TrainConfig(epochs=3, seed=0))
    odd = train(Linear(True), data, TrainConfig(epochs=3, seed=0))
    assert odd.final_loss == pytest.approx(plain.final_loss, rel=1e-5)
    assert odd.accuracy == pytest.approx(plain.accuracy)
