"""Conventional operators: always valid and inside the space, deterministic for a seed, every mutation kind used;
dedup in propose_slot."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhnas.arch import Architecture, analyze, arch_hash, canonical_json, parse_architecture
from uhnas.arch.model import Conv2d
from uhnas.hardware.registry import load_backend
from uhnas.records import TrialRecord
from uhnas.search.engine import propose_slot
from uhnas.search.operators.base import Operator, OperatorContext, Proposal, ProposalError
from uhnas.search.operators.random import MUTATIONS, RandomOperator, random_architecture, sample_architecture
from uhnas.search.space import outside_space
from uhnas.seeding import numpy_rng

DIGITS = ((1, 8, 8), 10)
MNIST = ((1, 28, 28), 10)
CARD = load_backend("ideal").describe()
OP = RandomOperator()


def context(
    seed: int, shape: tuple[tuple[int, ...], int] = DIGITS, generation: int = 1, known: set[str] | None = None
) -> OperatorContext:
    """A context whose generator is derived from `seed` like the engine's."""
    known = known or set()
    return OperatorContext(
        generation=generation,
        slot=0,
        attempt=0,
        rng=numpy_rng(seed, "test"),
        seed=seed,
        dataset="digits",
        input_shape=shape[0],
        num_classes=shape[1],
        backend=CARD,
        objective="mean",
        population=(),
        front=(),
        recent=(),
        history=(),
        is_known=known.__contains__,
        generations=3,
        offspring=2,
        population_size=4,
    )


def record(arch: Architecture, number: int) -> TrialRecord:
    return TrialRecord(
        generation=0, slot=number, number=number, arch=arch.model_dump(mode="json"), hash=arch_hash(arch)
    )


@pytest.mark.parametrize("shape", [DIGITS, MNIST])
def test_initializer_valid_diverse_and_inside_the_space(shape: tuple[tuple[int, ...], int]) -> None:
    archs = [OP.initialize(context(seed, shape)).arch for seed in range(150)]
    for arch in archs:
        analyze(arch, *shape)
        assert outside_space(arch) == []
    kinds = Counter("cnn" if any(isinstance(layer, Conv2d) for layer in a.layers) else "mlp" for a in archs)
    assert kinds["cnn"] > 30 and kinds["mlp"] > 30
    assert len({arch_hash(a) for a in archs}) > 120


def test_initializer_is_deterministic_for_a_seed() -> None:
    first = [canonical_json(OP.initialize(context(seed)).arch) for seed in range(20)]
    second = [canonical_json(OP.initialize(context(seed)).arch) for seed in range(20)]
    assert first == second


def test_random_architecture_is_the_sampler_with_the_contexts_generator() -> None:
    for seed in range(20):
        ctx = context(seed)
        assert random_architecture(ctx) == sample_architecture(numpy_rng(seed, "test"), *DIGITS)


def parents(count: int, shape: tuple[tuple[int, ...], int] = DIGITS) -> list[TrialRecord]:
    return [record(OP.initialize(context(1000 + i, shape)).arch, i) for i in range(count)]


@pytest.mark.parametrize("shape", [DIGITS, MNIST])
def test_mutation_always_valid_and_different(shape: tuple[tuple[int, ...], int]) -> None:
    pool = parents(40, shape)
    for seed in range(300):
        parent = pool[seed % len(pool)]
        proposal = OP.mutate(context(seed, shape), parent)
        analyze(proposal.arch, *shape)
        assert outside_space(proposal.arch) == []  # in-space parents have in-space children
        assert canonical_json(proposal.arch) != canonical_json(parent.architecture)
        assert proposal.parents == (parent.number,)
        assert proposal.metadata["mutations"][0] in MUTATIONS


def test_every_mutation_kind_occurs() -> None:
    pool = parents(30)
    kinds = Counter(OP.mutate(context(seed), pool[seed % 30]).metadata["mutations"][0] for seed in range(400))
    assert set(kinds) == set(MUTATIONS), f"missing: {set(MUTATIONS) - set(kinds)}"


def test_mutation_and_crossover_deterministic_for_a_seed() -> None:
    a, b = parents(2)
    for seed in range(20):
        assert OP.mutate(context(seed), a) == OP.mutate(context(seed), a)
        assert OP.crossover(context(seed), a, b) == OP.crossover(context(seed), a, b)


@pytest.mark.parametrize("shape", [DIGITS, MNIST])
def test_crossover_always_valid(shape: tuple[tuple[int, ...], int]) -> None:
    pool = parents(30, shape)
    for seed in range(200):
        first, second = pool[seed % 30], pool[(seed * 7 + 3) % 30]
        proposal = OP.crossover(context(seed, shape), first, second)
        analyze(proposal.arch, *shape)
        assert outside_space(proposal.arch) == []
        assert proposal.parents == (first.number, second.number)
        assert {"cut_conv", "cut_flat", "mutations"} <= set(proposal.metadata)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**40), parent_seed=st.integers(min_value=0, max_value=2**20))
def test_mutation_of_any_random_parent_is_valid(seed: int, parent_seed: int) -> None:
    parent = record(OP.initialize(context(parent_seed)).arch, 0)
    analyze(OP.mutate(context(seed), parent).arch, *DIGITS)


def test_minimal_and_foreign_parents_can_be_mutated() -> None:
    minimal = parse_architecture({"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10}]})
    big = parse_architecture(
        {
            "layers": [
                {"type": "conv2d", "out_channels": 128, "kernel": 7, "padding": 3},
                {"type": "activation", "function": "square"},
                {"type": "avgpool", "kernel": 4},
                {"type": "flatten"},
                {"type": "linear", "out_features": 1024},
                {"type": "activation", "function": "saturating"},
                {"type": "linear", "out_features": 10},
            ]
        }
    )
    for arch in (minimal, big):
        for seed in range(50):
            analyze(OP.mutate(context(seed), record(arch, 0)).arch, *DIGITS)


def test_a_parent_without_flatten_is_refused_cleanly() -> None:
    flat_only = TrialRecord(generation=0, slot=0, number=0, arch=None)
    with pytest.raises(ProposalError):
        OP.mutate(context(0), flat_only)


# ----------------------------------------------------------------------------- dedup in the engine's propose_slot


class Stubborn:
    """A method that proposes the same architecture `times` times, then a fresh one."""

    name = "stubborn"

    def __init__(self, arch: Architecture, times: int, fresh: Architecture | None = None) -> None:
        self.arch, self.times, self.fresh = arch, times, fresh
        self.asked = 0
        self.refused: list[str] = []

    def propose(self, context: OperatorContext) -> Proposal:
        self.asked += 1
        if self.asked <= self.times or self.fresh is None:
            return Proposal(self.arch, "stubborn")
        return Proposal(self.fresh, "stubborn")

    def rejected(self, context: OperatorContext, proposal: Proposal | None, reason: str) -> None:
        self.refused.append(reason)

    def observe(self, records: Any) -> None: ...

    def survive(self, candidates: Any, size: int) -> list[TrialRecord]:
        return list(candidates)[:size]

    def reflect(self, context: OperatorContext) -> None:
        return None


MLP = parse_architecture(
    {
        "layers": [
            {"type": "flatten"},
            {"type": "linear", "out_features": 32},
            {"type": "activation", "function": "relu"},
            {"type": "linear", "out_features": 10},
        ]
    }
)
OTHER = parse_architecture({"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10}]})


def test_known_architecture_is_asked_again_then_accepted() -> None:
    method = Stubborn(MLP, times=2, fresh=OTHER)
    known = {arch_hash(MLP): (0, 3)}
    choice = propose_slot(method, context(0), 1, known, max_attempts=5)
    assert choice.proposal is not None and choice.key == arch_hash(OTHER)
    assert choice.attempt == 2 and method.asked == 3
    assert len(choice.rejected) == 2 and all("duplicate of generation 0 slot 3" in r for r in choice.rejected)
    assert method.refused == choice.rejected


def test_bounded_attempts_then_the_reasons_are_kept() -> None:
    method = Stubborn(MLP, times=100)
    choice = propose_slot(method, context(0), 0, {arch_hash(MLP): (1, 0)}, max_attempts=4)
    assert choice.proposal is None and choice.key is None
    assert method.asked == 4 and len(choice.rejected) == 4


def test_invalid_and_unproposable_slots_are_refused_with_reasons_and_operator_bugs_raise() -> None:
    wrong_classes = parse_architecture({"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 3}]})
    choice = propose_slot(Stubborn(wrong_classes, times=100), context(0), 0, {}, max_attempts=2)
    assert choice.proposal is None and all("invalid architecture" in r for r in choice.rejected)

    class Refusing(Stubborn):
        def propose(self, context: OperatorContext) -> Proposal:
            raise ProposalError("no valid child\nsecond line")

    choice = propose_slot(Refusing(MLP, 0), context(0), 0, {}, max_attempts=3)
    assert choice.rejected == ["ProposalError: no valid child"] * 3

    class Broken(Stubborn):
        def propose(self, context: OperatorContext) -> Proposal:
            raise RuntimeError("the operator broke")

    with pytest.raises(RuntimeError, match="the operator broke"):
        propose_slot(Broken(MLP, 0), context(0), 0, {}, max_attempts=3)


def test_each_attempt_gets_its_own_stream() -> None:
    seen: list[float] = []

    class Recorder(Stubborn):
        def propose(self, context: OperatorContext) -> Proposal:
            seen.append(float(context.rng.random()))
            raise ProposalError("again")

    propose_slot(Recorder(MLP, 0), context(5), 2, {}, max_attempts=3)
    replay: list[float] = []
    seen_first = list(seen)
    seen.clear()
    propose_slot(Recorder(MLP, 0), context(5), 2, {}, max_attempts=3)
    replay = list(seen)
    assert seen_first == replay and len(set(seen_first)) == 3


def test_random_operator_satisfies_the_protocol() -> None:
    assert isinstance(OP, Operator)
    assert OP.reflect(context(0)) is None
    assert np.isfinite(0.0)
