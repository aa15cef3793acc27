"""One search space: the operators, the Optuna encoding and the hypervolume reference networks all stay inside
`uhnas.search.space`, and the reference point stays where it was while the space does not change."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import optuna
import pytest

from uhnas.arch import ACTIVATIONS as IR_ACTIVATIONS
from uhnas.arch import Architecture, analyze, canonical_json, parse_architecture
from uhnas.arch.model import Conv2d, Dropout, Linear
from uhnas.config import RunConfig
from uhnas.hardware.registry import load_backend
from uhnas.records import TrialRecord
from uhnas.search import space
from uhnas.search.methods import MethodSetup, make_method
from uhnas.search.operators import random as random_ops
from uhnas.search.operators.base import OperatorContext
from uhnas.search.optuna_methods import suggest_architecture
from uhnas.search.reference import corner_architectures, hv_reference, reference_architectures
from uhnas.seeding import numpy_rng

DIGITS = ((1, 8, 8), 10)
MNIST = ((1, 28, 28), 10)
FLAT = ((64,), 10)
SHAPES = [DIGITS, MNIST, FLAT]
CARD = load_backend("ideal").describe()

# sha256 over the canonical JSON of the reference networks when the space moved to space.py (identical to the
# networks engine.py built before). A change means every run's reference point may move: hypervolumes of older
# runs no longer compare. Change the space deliberately, then update these and say so.
REFERENCE_DIGESTS = {
    DIGITS: "1884b2a22b0f5be0",
    MNIST: "7e924ceaf2dd1017",
    FLAT: "f89a29937b7674d4",
}


def values(archs: list[Architecture]) -> dict[str, set[Any]]:
    """Every hidden width, channel count, kernel and dropout p used by `archs`."""
    used: dict[str, set[Any]] = {"widths": set(), "channels": set(), "kernels": set(), "dropout": set()}
    for arch in archs:
        for layer in arch.layers[:-1]:  # the classifier's width is the class count
            if isinstance(layer, Linear):
                used["widths"].add(layer.out_features)
            elif isinstance(layer, Conv2d):
                used["channels"].add(layer.out_channels)
                used["kernels"].add(layer.kernel)
            elif isinstance(layer, Dropout):
                used["dropout"].add(layer.p)
    return used


SPACE = {"widths": set(space.WIDTHS), "channels": set(space.CHANNELS), "kernels": set(space.KERNELS)}
SPACE["dropout"] = set(space.DROPOUT_P)


# ----------------------------------------------------------------------------- the space as data


def test_the_space_is_consistent_data() -> None:
    for choices in (space.WIDTHS, space.CHANNELS, space.KERNELS, space.DROPOUT_P):
        assert list(choices) == sorted(set(choices))
    assert space.KERNELS[0] == 1  # repair shrinks an oversized kernel down to 1
    assert set(space.INIT_WIDTHS) <= set(space.WIDTHS) and set(space.INIT_KERNELS) <= set(space.KERNELS)
    assert set(space.ACTIVATION_WEIGHTS) == set(space.ACTIVATIONS) == set(IR_ACTIVATIONS)
    assert list(space.CONV_LAYERS) == sorted(space.CONV_LAYERS) and list(space.FLAT_LAYERS) == sorted(space.FLAT_LAYERS)
    assert set(random_ops.LAYER_SAMPLERS) == set(space.CONV_LAYERS) | set(space.FLAT_LAYERS)
    assert len(random_ops.CONV_BLOCK_PROBS) == space.MAX_CONV
    assert len(random_ops.HIDDEN_BLOCK_PROBS) == space.MAX_DENSE + 1
    assert sum(random_ops.CONV_BLOCK_PROBS) == pytest.approx(1) == sum(random_ops.HIDDEN_BLOCK_PROBS)


def test_outside_space_names_each_offending_layer() -> None:
    foreign = parse_architecture(
        {
            "layers": [
                {"type": "conv2d", "out_channels": 12, "kernel": 7, "padding": 3},
                {"type": "avgpool", "kernel": 4},
                {"type": "flatten"},
                {"type": "linear", "out_features": 100},
                {"type": "dropout", "p": 0.25},
                {"type": "linear", "out_features": 10},
            ]
        }
    )
    reasons = space.outside_space(foreign)
    assert [r.split(":")[0] for r in reasons] == [
        "layer 0 (conv2d)",
        "layer 0 (conv2d)",
        "layer 1 (avgpool)",
        "layer 3 (linear)",
        "layer 4 (dropout)",
    ]
    assert space.outside_space(random_ops.sample_architecture(numpy_rng(0), *DIGITS)) == []


# ----------------------------------------------------------------------------- the three users of the space


@pytest.mark.parametrize("shape", SHAPES)
def test_conventional_operators_stay_inside_the_space(shape: tuple[tuple[int, ...], int]) -> None:
    archs = [random_ops.sample_architecture(numpy_rng(seed, "space"), *shape) for seed in range(200)]
    records = [TrialRecord(generation=0, slot=i, number=i, arch=a.model_dump(mode="json")) for i, a in enumerate(archs)]
    op = random_ops.RandomOperator()
    for seed in range(300):
        ctx = context(seed, shape)
        archs.append(op.mutate(ctx, records[seed % 50]).arch)
        archs.append(op.crossover(context(seed + 1000, shape), records[seed % 50], records[(seed * 7 + 1) % 50]).arch)
    for arch in archs:
        assert space.outside_space(arch) == [], canonical_json(arch)
    used = values(archs)
    for key, allowed in SPACE.items():
        assert used[key] <= allowed
    assert used["widths"] == SPACE["widths"]  # mutation reaches the widths the initializer does not start from
    if len(shape[0]) == 3:
        assert used["channels"] == SPACE["channels"] and used["kernels"] == SPACE["kernels"]


@pytest.mark.parametrize("shape", SHAPES)
def test_optuna_encoding_stays_inside_the_space_and_covers_it(shape: tuple[tuple[int, ...], int]) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = [suggest_architecture(study.ask(), *shape) for _ in range(300)]  # too large ones: the engine refuses
    for arch in archs:
        assert space.outside_space(arch) == [], canonical_json(arch)
    used = values(archs)
    assert used["widths"] == SPACE["widths"] and used["dropout"] == SPACE["dropout"]
    if len(shape[0]) == 3:
        assert used["channels"] == SPACE["channels"] and used["kernels"] == SPACE["kernels"]


@pytest.mark.parametrize("method", ["optuna-nsga2", "optuna-tpe"])
def test_optuna_methods_propose_inside_the_space(method: str) -> None:
    made = make_method(method, MethodSetup(RunConfig(), DIGITS[0], DIGITS[1], (1.0, 5.0)))
    for slot in range(40):
        assert space.outside_space(made.propose(context(slot, DIGITS, slot=slot)).arch) == []


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_networks_stay_inside_the_space_and_are_unchanged(shape: tuple[tuple[int, ...], int]) -> None:
    archs = reference_architectures(*shape, CARD)
    for arch in archs:
        analyze(arch, *shape)
        assert space.outside_space(arch) == [], canonical_json(arch)
    digest = hashlib.sha256("\n".join(canonical_json(a) for a in archs).encode()).hexdigest()
    assert digest[:16] == REFERENCE_DIGESTS[shape], "the reference networks moved: see REFERENCE_DIGESTS"


@pytest.mark.parametrize("shape", SHAPES)
def test_corner_networks_are_the_space_extremes(shape: tuple[tuple[int, ...], int]) -> None:
    corners = corner_architectures(*shape)
    assert len(corners) == (2 if len(shape[0]) == 3 else 1)
    mlp = Counter(layer.out_features for layer in corners[0].layers if isinstance(layer, Linear))
    assert mlp == {space.WIDTHS[-1]: space.MAX_MATMULS - 1, shape[1]: 1}
    if len(corners) == 2:
        convs = [layer for layer in corners[1].layers if isinstance(layer, Conv2d)]
        assert len(convs) == space.MAX_CONV
        assert {(c.out_channels, c.kernel) for c in convs} == {(space.CHANNELS[-1], space.KERNELS[-1])}


@pytest.mark.parametrize("name", ["gpu-b200-fp16", "mzi-realistic"])
def test_hv_reference_is_frozen_and_bounds_the_initializer(name: str) -> None:
    backend = load_backend(name)
    ref = hv_reference(backend, *DIGITS)
    assert ref["point"][0] == 1.0 and ref == hv_reference(backend, *DIGITS)
    assert set(ref) == {"point", "space", "reference_energy_nj", "margin_decades", "reference_network", "rule"}
    energy = max(
        backend.energy(analyze(random_ops.sample_architecture(numpy_rng(seed), *DIGITS), *DIGITS)).total_nj
        for seed in range(100)
    )
    assert energy <= ref["reference_energy_nj"] * 10 ** ref["margin_decades"]


def context(seed: int, shape: tuple[tuple[int, ...], int], slot: int = 0) -> OperatorContext:
    """A generation-1 context with a generator derived from `seed`."""
    return OperatorContext(
        generation=1,
        slot=slot,
        attempt=0,
        rng=numpy_rng(seed, "space-test"),
        seed=seed,
        dataset="test",
        input_shape=shape[0],
        num_classes=shape[1],
        backend=CARD,
        objective="mean",
        population=(),
        front=(),
        recent=(),
        history=(),
        is_known=lambda key: False,
        generations=3,
        offspring=2,
        population_size=4,
    )
