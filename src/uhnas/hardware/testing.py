"""Conformance suite for backend authors: run `assert_conforms(MyBackend(...))` in your tests.

It checks what the search relies on: protocol shapes and types, sourced constants on the card,
energy that is finite, non-negative, sums to its total and grows with work, violations with units,
realize() batched over draws and deterministic for a generator, and (given the backend with every
non-ideality switched off) the ideal limit: the device reproduces the plain network.

A family that ships an accelerated simulator beside its reference model checks one against the other with
`check_accelerator`: without non-idealities the two agree exactly (to float rounding), with them statistically
(the mean and spread of every output over Monte-Carlo draws, from independent random streams).
"""

from __future__ import annotations

import math

import torch

from uhnas.arch import analyze, parse_architecture
from uhnas.arch.build import Network, build, forward_draws
from uhnas.hardware.base import Backend, RealizedModel
from uhnas.hardware.card import BackendCard, EnergyReport, Violation

INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
IDEAL_ATOL = 1e-4  # absolute tolerance on logits in the ideal limit (float32 arithmetic on O(1) values)


def _mlp(width: int) -> dict:
    return {
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": width},
            {"type": "activation", "function": "relu"},
            {"type": "linear", "out_features": NUM_CLASSES},
        ]
    }


CNN = {
    "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1},
        {"type": "activation", "function": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": NUM_CLASSES},
    ]
}


def _network(spec: dict, seed: int = 0) -> Network:
    return build(parse_architecture(spec), INPUT_SHAPE, NUM_CLASSES, seed=seed).eval()


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def check_card(backend: Backend) -> None:
    """The card names the backend and every constant has a value, a unit field and a source."""
    card = backend.describe()
    assert isinstance(card, BackendCard), f"describe() returned {type(card).__name__}, not BackendCard"
    assert card.name == backend.name, f"card name {card.name!r} != backend name {backend.name!r}"
    for key, constant in card.constants.items():
        assert {"value", "unit", "source"} <= set(constant), f"constant {key!r} lacks value/unit/source"
        assert str(constant["source"]).strip(), f"constant {key!r} has an empty source"


def check_energy(backend: Backend) -> None:
    """Energy is finite, non-negative, sums to its total, and grows with the work done."""
    totals = []
    for width in (8, 32, 128):
        report = backend.energy(analyze(parse_architecture(_mlp(width)), INPUT_SHAPE, NUM_CLASSES))
        assert isinstance(report, EnergyReport), "energy() must return an EnergyReport"
        assert report.breakdown_nj, "energy breakdown is empty"
        for component, value in report.breakdown_nj.items():
            assert math.isfinite(value) and value >= 0, f"component {component!r} = {value} nJ"
        assert math.isclose(report.total_nj, sum(report.breakdown_nj.values()), rel_tol=1e-12)
        totals.append(report.total_nj)
    assert totals[0] > 0, "a network with MACs costs no energy"
    assert totals == sorted(totals), f"energy not monotone in work: {totals} nJ for widths 8, 32, 128"


def check_violations(backend: Backend) -> None:
    """check() returns Violation objects with units and non-negative amounts."""
    for spec in (_mlp(16), CNN):
        violations = backend.check(analyze(parse_architecture(spec), INPUT_SHAPE, NUM_CLASSES))
        assert isinstance(violations, list), "check() must return a list"
        for violation in violations:
            assert isinstance(violation, Violation), f"check() returned {type(violation).__name__}"
            assert violation.amount >= 0


def check_realize(backend: Backend, draws: int = 4, seed: int = 0) -> None:
    """realize() gives (draws, batch, classes), finite, identical for identical generator seeds."""
    x = torch.randn(5, *INPUT_SHAPE, generator=_generator(1))
    for spec in (_mlp(16), CNN):
        model = _network(spec)
        realized = backend.realize(model, draws, _generator(seed))
        assert isinstance(realized, RealizedModel), "realize() must return a RealizedModel"
        with torch.no_grad():
            first = realized(x)
            second = backend.realize(model, draws, _generator(seed))(x)
        assert first.shape == (draws, 5, NUM_CLASSES), f"realized output shape {tuple(first.shape)}"
        assert torch.isfinite(first).all(), "realized output has non-finite values"
        assert torch.equal(first, second), "realize() is not deterministic for a generator seed"


def check_ideal_limit(ideal: Backend) -> None:
    """With every non-ideality off, every draw equals the plain network's output."""
    x = torch.randn(7, *INPUT_SHAPE, generator=_generator(2))
    for spec in (_mlp(16), CNN):
        model = _network(spec)
        with torch.no_grad():
            reference = model(x)
            realized = ideal.realize(model, 3, _generator(0))(x)
        error = float((realized - reference).abs().max())
        assert error <= IDEAL_ATOL, f"ideal limit off by {error:.3g} (tolerance {IDEAL_ATOL})"


def check_training_programs(backend: Backend) -> None:
    """training_programs() is None or differentiable programs that let gradients reach the weights."""

    model = _network(_mlp(16)).train()
    programs = backend.training_programs(model, _generator(0))
    if programs is None:
        return
    x = torch.randn(4, *INPUT_SHAPE, generator=_generator(3))
    forward_draws(model, programs, 1, x).sum().backward()
    for layer in model.matmuls():
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all(), (
            f"no gradient reaches layer {layer.index}"
        )


ACCELERATOR_DRAWS = 64  # Monte-Carlo draws per simulator in the statistical comparison
MEAN_SIGMAS = 5.0  # per-output means may differ by this many standard errors of their difference
STD_RATIO = (0.6, 1.6)  # per-output spreads agree within this ratio (sampling error of a std at 64 draws: ~9 %)


def _draws_of(backend: Backend, spec: dict, x: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    with torch.no_grad():
        return backend.realize(_network(spec), draws, _generator(seed))(x).double()


def check_accelerator(
    accelerated: Backend,
    reference: Backend,
    ideal: tuple[Backend, Backend] | None = None,
    draws: int = ACCELERATOR_DRAWS,
) -> None:
    """An accelerated simulator computes its reference model: `accelerated` and `reference` are the same preset
    with the two simulators; `ideal` the same pair with every non-ideality off.

    Ideal: every draw of both equals the same outputs to float rounding (IDEAL_ATOL). Noisy: from independent
    generator seeds, each output's mean over `draws` agrees within MEAN_SIGMAS standard errors and its spread within
    STD_RATIO (where the spread is above float rounding).
    """
    x = torch.randn(7, *INPUT_SHAPE, generator=_generator(4))
    for spec in (_mlp(16), CNN):
        if ideal is not None:
            fast, slow = (_draws_of(b, spec, x, 2, 0) for b in ideal)
            error = float((fast - slow).abs().max())
            assert error <= IDEAL_ATOL, f"ideal accelerator off its reference by {error:.3g} (tolerance {IDEAL_ATOL})"
        fast, slow = _draws_of(accelerated, spec, x, draws, 1), _draws_of(reference, spec, x, draws, 2)
        mean_f, mean_s, std_f, std_s = fast.mean(0), slow.mean(0), fast.std(0), slow.std(0)
        bound = MEAN_SIGMAS * ((std_f**2 + std_s**2) / draws).sqrt() + IDEAL_ATOL
        worst = float(((mean_f - mean_s).abs() / bound).max())
        assert worst <= 1.0, f"accelerator mean off its reference: {worst:.2f} x the {MEAN_SIGMAS}-sigma bound"
        spread = (std_f > 10 * IDEAL_ATOL) & (std_s > 10 * IDEAL_ATOL)
        if bool(spread.any()):
            ratio = std_f[spread] / std_s[spread]
            low, high = float(ratio.min()), float(ratio.max())
            assert STD_RATIO[0] <= low and high <= STD_RATIO[1], f"accelerator spread off: ratios {low:.2f}..{high:.2f}"


def assert_conforms(backend: Backend, ideal: Backend | None = None) -> None:
    """Run every check; `ideal` is the same backend with all non-idealities switched off."""
    assert isinstance(backend, Backend), f"{type(backend).__name__} does not implement the Backend protocol"
    check_card(backend)
    check_energy(backend)
    check_violations(backend)
    check_realize(backend)
    check_training_programs(backend)
    if ideal is not None:
        check_ideal_limit(ideal)
