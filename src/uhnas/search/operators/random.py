"""Conventional operators: a random initializer, structured random mutations and one-point crossover.

An architecture for an image dataset is read as two segments around its single flatten layer: the conv segment
(conv2d, pooling, activation, batchnorm, dropout) and the flat segment (linear, activation, batchnorm, dropout)
ending in the linear classifier. Mutations edit one layer or one property (insert / remove / replace a layer,
change width, channels or kernel, change an activation, toggle batchnorm or dropout); crossover joins a prefix of
one parent with a suffix of the other in each segment. Every result is repaired (spatial sizes, classifier) and
validated with `uhnas.arch.analyze`; an operator resamples up to `MAX_TRIES` times and raises ProposalError if
none is valid. Every value sampled here comes from the conventional space in `uhnas.search.space` (modest, so a
digits evaluation takes seconds); parents proposed by other operators may be larger and are edited as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from uhnas.arch import Architecture, ArchitectureError, analyze, canonical_json
from uhnas.arch.model import Activation, AvgPool, BatchNorm, Conv2d, Dropout, Flatten, Linear, MaxPool
from uhnas.records import TrialRecord
from uhnas.search.operators.base import OperatorContext, Proposal, ProposalError
from uhnas.search.space import (
    ACTIVATION_WEIGHTS,
    ACTIVATIONS,
    CHANNELS,
    CONV_LAYERS,
    DEFAULT_ACTIVATION_WEIGHT,
    DROPOUT_P,
    FLAT_LAYERS,
    INIT_KERNELS,
    INIT_WIDTHS,
    KERNELS,
    MAX_DENSE,
    MAX_MATMULS,
    POOL_KERNEL,
    WIDTHS,
)

MAX_TRIES = 30  # resampling attempts inside one operator call before it gives up
SAME_PADDING_PROB = 0.8
BATCHNORM_PROB = 0.2
DROPOUT_PROB = 0.15
POOL_PROB = 0.5
MAXPOOL_PROB = 0.7  # share of max (vs average) pools
CNN_PROB = 0.5  # share of CNNs among initial architectures on image datasets
HIDDEN_BLOCK_PROBS = (0.1, 0.4, 0.3, 0.2)  # initial hidden dense blocks: 0, 1, ..., MAX_DENSE
CONV_BLOCK_PROBS = (0.4, 0.4, 0.2)  # initial conv blocks: 1, ..., MAX_CONV
MUTATE_AFTER_CROSSOVER_PROB = 0.5  # a crossover child also gets one mutation (always, if it equals a parent)

MUTATIONS = (
    "insert_layer",
    "remove_layer",
    "replace_layer",
    "change_width",
    "change_channels",
    "change_kernel",
    "change_activation",
    "toggle_batchnorm",
    "toggle_dropout",
)

Layers = list[Any]
Segments = tuple[Layers, Layers]  # (conv segment, flat segment)


# ----------------------------------------------------------------------------- sampling single layers


def _choice(rng: np.random.Generator, options: tuple[Any, ...] | list[Any]) -> Any:
    """A uniformly chosen element (a Python object, not a numpy scalar)."""
    return options[int(rng.integers(len(options)))]


def sample_activation(rng: np.random.Generator, exclude: str | None = None) -> Activation:
    """An activation layer, ReLU-heavy, never `exclude`."""
    names = [n for n in ACTIVATIONS if n != exclude]
    weights = np.array([ACTIVATION_WEIGHTS.get(n, DEFAULT_ACTIVATION_WEIGHT) for n in names])
    return Activation(type="activation", function=names[int(rng.choice(len(names), p=weights / weights.sum()))])


def sample_linear(rng: np.random.Generator) -> Linear:
    """A hidden linear layer with a width from INIT_WIDTHS."""
    return Linear(type="linear", out_features=_choice(rng, INIT_WIDTHS))


def sample_conv(rng: np.random.Generator) -> Conv2d:
    """A conv layer: channels from CHANNELS, a kernel from INIT_KERNELS, mostly 'same' padding."""
    kernel = _choice(rng, INIT_KERNELS)
    padding = kernel // 2 if rng.random() < SAME_PADDING_PROB else 0
    return Conv2d(type="conv2d", out_channels=_choice(rng, CHANNELS), kernel=kernel, padding=padding)


def sample_pool(rng: np.random.Generator) -> MaxPool | AvgPool:
    """A POOL_KERNEL max (MAXPOOL_PROB) or average pool."""
    if rng.random() < MAXPOOL_PROB:
        return MaxPool(type="maxpool", kernel=POOL_KERNEL)
    return AvgPool(type="avgpool", kernel=POOL_KERNEL)


def sample_dropout(rng: np.random.Generator) -> Dropout:
    """A dropout layer with p from DROPOUT_P."""
    return Dropout(type="dropout", p=_choice(rng, DROPOUT_P))


LAYER_SAMPLERS: dict[str, Callable[[np.random.Generator], Any]] = {
    "activation": sample_activation,
    "avgpool": lambda rng: AvgPool(type="avgpool", kernel=POOL_KERNEL),
    "batchnorm": lambda rng: BatchNorm(type="batchnorm"),
    "conv2d": sample_conv,
    "dropout": sample_dropout,
    "linear": sample_linear,
    "maxpool": lambda rng: MaxPool(type="maxpool", kernel=POOL_KERNEL),
}
"""Layer type -> a fresh layer of that type from the space (for replace_layer; the vocabulary is in space.py)."""
MATMUL_TYPES = ("conv2d", "linear")


# ----------------------------------------------------------------------------- segments, repair, validation


def is_image(input_shape: tuple[int, ...]) -> bool:
    """True for C x H x W inputs (a flatten layer separates the conv and flat segments)."""
    return len(input_shape) == 3


def split(arch: Architecture, input_shape: tuple[int, ...]) -> Segments:
    """(conv segment, flat segment) around the single flatten layer; the whole list is flat for flat inputs."""
    layers = list(arch.layers)
    if not is_image(input_shape):
        return [], layers
    cuts = [i for i, layer in enumerate(layers) if isinstance(layer, Flatten)]
    if len(cuts) != 1:
        raise ProposalError(f"architecture has {len(cuts)} flatten layers; conventional operators need exactly one")
    return layers[: cuts[0]], layers[cuts[0] + 1 :]


def join(segments: Segments, input_shape: tuple[int, ...]) -> Architecture:
    """The architecture of two segments."""
    conv, flat = segments
    layers = [*conv, Flatten(type="flatten"), *flat] if is_image(input_shape) else [*conv, *flat]
    return Architecture(layers=layers)


def count_matmuls(segments: Segments) -> int:
    """Conv and linear layers (what a backend maps onto its device)."""
    return sum(isinstance(layer, (Conv2d, Linear)) for segment in segments for layer in segment)


def repair_conv(conv: Layers, input_shape: tuple[int, ...]) -> Layers:
    """Make the conv segment fit the image: shrink oversized conv kernels, drop pools that do not fit."""
    if not is_image(input_shape):
        return []
    _, height, width = input_shape
    size = min(height, width)
    fixed: Layers = []
    for layer in conv:
        if isinstance(layer, Conv2d):
            if layer.kernel > size + 2 * layer.padding:
                kernel = max((k for k in KERNELS if k <= size), default=KERNELS[0])
                layer = layer.model_copy(update={"kernel": kernel, "padding": kernel // 2})
            size = (size + 2 * layer.padding - layer.kernel) // layer.stride + 1
        elif isinstance(layer, (MaxPool, AvgPool)):
            if layer.kernel > size:
                continue
            size = (size - layer.kernel) // (layer.stride or layer.kernel) + 1
        fixed.append(layer)
    return fixed


def repair_flat(flat: Layers, num_classes: int) -> Layers:
    """End the flat segment with a linear classifier of `num_classes` outputs (trailing layers dropped)."""
    fixed = list(flat)
    while fixed and not isinstance(fixed[-1], Linear):
        fixed.pop()
    if not fixed:
        return [Linear(type="linear", out_features=num_classes)]
    if fixed[-1].out_features != num_classes:
        fixed[-1] = fixed[-1].model_copy(update={"out_features": num_classes})
    return fixed


def repair(segments: Segments, input_shape: tuple[int, ...], num_classes: int) -> Segments:
    """Both segments repaired (see `repair_conv`, `repair_flat`)."""
    conv, flat = segments
    return repair_conv(conv, input_shape), repair_flat(flat, num_classes)


def validated(segments: Segments, input_shape: tuple[int, ...], num_classes: int) -> Architecture | None:
    """The repaired architecture if `analyze` accepts it for the dataset, else None."""
    try:
        arch = join(repair(segments, input_shape, num_classes), input_shape)
        analyze(arch, input_shape, num_classes)
    except (ArchitectureError, ValueError):
        return None
    return arch


# ----------------------------------------------------------------------------- initializer


def sample_mlp(rng: np.random.Generator, num_classes: int, max_hidden: int = MAX_DENSE) -> Layers:
    """A flat segment: up to MAX_DENSE hidden blocks (linear, optional batchnorm, activation, optional dropout),
    then the classifier."""
    hidden = int(rng.choice(len(HIDDEN_BLOCK_PROBS), p=HIDDEN_BLOCK_PROBS))
    layers: Layers = []
    for _ in range(min(hidden, max_hidden)):
        layers.append(sample_linear(rng))
        if rng.random() < BATCHNORM_PROB:
            layers.append(BatchNorm(type="batchnorm"))
        layers.append(sample_activation(rng))
        if rng.random() < DROPOUT_PROB:
            layers.append(sample_dropout(rng))
    layers.append(Linear(type="linear", out_features=num_classes))
    return layers


def sample_cnn(rng: np.random.Generator, input_shape: tuple[int, ...]) -> Layers:
    """A conv segment: 1-MAX_CONV blocks (conv, optional batchnorm, activation, optional pool) that fit the image."""
    blocks = 1 + int(rng.choice(len(CONV_BLOCK_PROBS), p=CONV_BLOCK_PROBS))
    size = min(input_shape[1:])
    layers: Layers = []
    for _ in range(blocks):
        conv = sample_conv(rng)
        if conv.kernel > size + 2 * conv.padding:
            break
        layers.append(conv)
        size = size + 2 * conv.padding - conv.kernel + 1
        if rng.random() < BATCHNORM_PROB:
            layers.append(BatchNorm(type="batchnorm"))
        layers.append(sample_activation(rng))
        if size >= 2 * POOL_KERNEL and rng.random() < POOL_PROB:
            layers.append(sample_pool(rng))
            size //= POOL_KERNEL
    return layers


def sample_architecture(rng: np.random.Generator, input_shape: tuple[int, ...], num_classes: int) -> Architecture:
    """A valid random MLP or small CNN from the space's initial subset (see `uhnas.search.space`), drawn with `rng`."""
    for _ in range(MAX_TRIES):
        conv: Layers = sample_cnn(rng, input_shape) if is_image(input_shape) and rng.random() < CNN_PROB else []
        convs = sum(isinstance(layer, Conv2d) for layer in conv)
        flat = sample_mlp(rng, num_classes, max_hidden=min(MAX_DENSE, MAX_MATMULS - 1 - convs))
        arch = validated((conv, flat), input_shape, num_classes)
        if arch is not None:
            return arch
    raise ProposalError(f"no valid random architecture in {MAX_TRIES} draws")


def random_architecture(context: OperatorContext) -> Architecture:
    """`sample_architecture` with the context's generator and dataset shapes."""
    return sample_architecture(context.rng, context.input_shape, context.num_classes)


# ----------------------------------------------------------------------------- mutations


def _positions(segment: Layers, kind: type | tuple[type, ...], exclude_last: bool = False) -> list[int]:
    """Indices of layers of `kind` in a segment (optionally not the last layer: the classifier)."""
    end = len(segment) - 1 if exclude_last else len(segment)
    return [i for i in range(end) if isinstance(segment[i], kind)]


def _hidden_matmuls(segments: Segments) -> list[tuple[int, int]]:
    """(segment, index) of every conv and hidden linear layer."""
    conv, flat = segments
    return [(0, i) for i in _positions(conv, Conv2d)] + [(1, i) for i in _positions(flat, Linear, exclude_last=True)]


def _copy(segments: Segments) -> Segments:
    return list(segments[0]), list(segments[1])


def mutate_insert_layer(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Insert a conv block (conv segment) or a linear block (flat segment) with its activation."""
    if count_matmuls(s) >= MAX_MATMULS:
        return None
    conv, flat = _copy(s)
    if image and rng.random() < 0.5:
        at = int(rng.integers(len(conv) + 1))
        conv[at:at] = [sample_conv(rng), sample_activation(rng)]
    else:
        at = int(rng.integers(len(flat)))  # before the classifier
        flat[at:at] = [sample_linear(rng), sample_activation(rng)]
    return conv, flat


def mutate_remove_layer(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Remove one layer (never the classifier)."""
    conv, flat = _copy(s)
    options = [(0, i) for i in range(len(conv))] + [(1, i) for i in range(len(flat) - 1)]
    if not options:
        return None
    segment, index = _choice(rng, options)
    del (conv, flat)[segment][index]
    return conv, flat


def mutate_replace_layer(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Replace one layer by a freshly sampled layer of another type valid in its segment."""
    conv, flat = _copy(s)
    options = [(0, i) for i in range(len(conv))] + [(1, i) for i in range(len(flat) - 1)]
    if not options:
        return None
    segment, index = _choice(rng, options)
    old = (conv, flat)[segment][index]
    room = count_matmuls(s) - isinstance(old, (Conv2d, Linear)) < MAX_MATMULS
    vocabulary = CONV_LAYERS if segment == 0 else FLAT_LAYERS
    types = sorted(t for t in vocabulary if t != old.type and (room or t not in MATMUL_TYPES))
    (conv, flat)[segment][index] = LAYER_SAMPLERS[_choice(rng, types)](rng)
    return conv, flat


def _resize(current: int, options: tuple[int, ...], rng: np.random.Generator) -> int:
    """A neighbouring size (half or double, clipped to the options) or, one time in three, any other option."""
    if rng.random() < 1 / 3:
        return _choice(rng, [o for o in options if o != current])
    factor = 2 if rng.random() < 0.5 else 0.5
    target = min(max(int(current * factor), options[0]), options[-1])
    return target if target != current else _choice(rng, [o for o in options if o != current])


def mutate_change_width(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Halve, double or resample the width of a hidden linear layer."""
    conv, flat = _copy(s)
    options = _positions(flat, Linear, exclude_last=True)
    if not options:
        return None
    i = _choice(rng, options)
    flat[i] = flat[i].model_copy(update={"out_features": _resize(flat[i].out_features, WIDTHS, rng)})
    return conv, flat


def mutate_change_channels(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Halve, double or resample the channels of a conv layer."""
    conv, flat = _copy(s)
    options = _positions(conv, Conv2d)
    if not options:
        return None
    i = _choice(rng, options)
    conv[i] = conv[i].model_copy(update={"out_channels": _resize(conv[i].out_channels, CHANNELS, rng)})
    return conv, flat


def mutate_change_kernel(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Give a conv layer another kernel size (with 'same' padding)."""
    conv, flat = _copy(s)
    options = _positions(conv, Conv2d)
    if not options:
        return None
    i = _choice(rng, options)
    kernel = _choice(rng, [k for k in KERNELS if k != conv[i].kernel])
    conv[i] = conv[i].model_copy(update={"kernel": kernel, "padding": kernel // 2})
    return conv, flat


def mutate_change_activation(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Change one activation function (or add one after a hidden matmul if there is none)."""
    conv, flat = _copy(s)
    segments = (conv, flat)
    options = [(0, i) for i in _positions(conv, Activation)] + [(1, i) for i in _positions(flat, Activation)]
    if options:
        segment, i = _choice(rng, options)
        segments[segment][i] = sample_activation(rng, exclude=segments[segment][i].function)
        return conv, flat
    matmuls = _hidden_matmuls(s)
    if not matmuls:
        return None
    segment, i = _choice(rng, matmuls)
    segments[segment].insert(i + 1, sample_activation(rng))
    return conv, flat


def _toggle(s: Segments, rng: np.random.Generator, kind: type, make: Callable[[], Any]) -> Segments | None:
    """Remove one layer of `kind` (half the time, when there is one) or insert one after a hidden matmul."""
    conv, flat = _copy(s)
    segments = (conv, flat)
    present = [(0, i) for i in _positions(conv, kind)] + [(1, i) for i in _positions(flat, kind)]
    matmuls = _hidden_matmuls(s)
    if present and (not matmuls or rng.random() < 0.5):
        segment, i = _choice(rng, present)
        del segments[segment][i]
        return conv, flat
    if not matmuls:
        return None
    segment, i = _choice(rng, matmuls)
    segments[segment].insert(i + 1, make())
    return conv, flat


def mutate_toggle_batchnorm(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Add batchnorm after a hidden matmul, or remove one."""
    return _toggle(s, rng, BatchNorm, lambda: BatchNorm(type="batchnorm"))


def mutate_toggle_dropout(s: Segments, rng: np.random.Generator, image: bool) -> Segments | None:
    """Add dropout after a hidden matmul, or remove one."""
    return _toggle(s, rng, Dropout, lambda: sample_dropout(rng))


MUTATION_FUNCTIONS: dict[str, Callable[[Segments, np.random.Generator, bool], Segments | None]] = {
    "insert_layer": mutate_insert_layer,
    "remove_layer": mutate_remove_layer,
    "replace_layer": mutate_replace_layer,
    "change_width": mutate_change_width,
    "change_channels": mutate_change_channels,
    "change_kernel": mutate_change_kernel,
    "change_activation": mutate_change_activation,
    "toggle_batchnorm": mutate_toggle_batchnorm,
    "toggle_dropout": mutate_toggle_dropout,
}


def mutate_architecture(arch: Architecture, context: OperatorContext) -> tuple[Architecture, str]:
    """One structured random mutation that yields a valid architecture different from `arch`, and its kind."""
    rng = context.rng
    segments = split(arch, context.input_shape)
    original = canonical_json(arch)
    image = is_image(context.input_shape)
    inapplicable: set[str] = set()  # kinds with nothing to act on in this parent (None is structural, not random)
    for _ in range(MAX_TRIES):
        kinds = [k for k in MUTATIONS if k not in inapplicable]
        if not kinds:
            break
        kind = _choice(rng, kinds)
        changed = MUTATION_FUNCTIONS[kind](segments, rng, image)
        if changed is None:
            inapplicable.add(kind)
            continue
        child = validated(changed, context.input_shape, context.num_classes)
        if child is not None and canonical_json(child) != original:
            return child, kind
    raise ProposalError(f"no valid mutation in {MAX_TRIES} tries")


def crossover_architectures(
    first: Architecture, second: Architecture, context: OperatorContext
) -> tuple[Architecture, dict[str, Any]]:
    """One-point crossover in each segment: a prefix of `first` joined to a suffix of `second`."""
    rng = context.rng
    a_conv, a_flat = split(first, context.input_shape)
    b_conv, b_flat = split(second, context.input_shape)
    for _ in range(MAX_TRIES):
        i, j = int(rng.integers(len(a_conv) + 1)), int(rng.integers(len(b_conv) + 1))
        k, m = int(rng.integers(len(a_flat))), int(rng.integers(len(b_flat)))  # b's suffix keeps its classifier
        child_segments = (a_conv[:i] + b_conv[j:], a_flat[:k] + b_flat[m:])
        if count_matmuls(child_segments) > max(
            MAX_MATMULS,
            count_matmuls(split(first, context.input_shape)),
            count_matmuls(split(second, context.input_shape)),
        ):
            continue
        child = validated(child_segments, context.input_shape, context.num_classes)
        if child is not None:
            return child, {"cut_conv": [i, j], "cut_flat": [k, m]}
    raise ProposalError(f"no valid crossover child in {MAX_TRIES} tries")


class RandomOperator:
    """The conventional operator: random initializer, structured mutation, one-point crossover; no reflection."""

    name = "random"

    def initialize(self, context: OperatorContext) -> Proposal:
        """A random MLP or small CNN."""
        return Proposal(random_architecture(context), f"{self.name}.init")

    def mutate(self, context: OperatorContext, parent: TrialRecord) -> Proposal:
        """One structured mutation of the parent."""
        arch = _parent_arch(parent)
        child, kind = mutate_architecture(arch, context)
        return Proposal(child, f"{self.name}.mutate", (parent.number,), metadata={"mutations": [kind]})

    def crossover(self, context: OperatorContext, first: TrialRecord, second: TrialRecord) -> Proposal:
        """One-point crossover of the parents, then one mutation (half the time, or whenever it equals a parent)."""
        a, b = _parent_arch(first), _parent_arch(second)
        child, cuts = crossover_architectures(a, b, context)
        mutations: list[str] = []
        if (
            canonical_json(child) in (canonical_json(a), canonical_json(b))
            or context.rng.random() < MUTATE_AFTER_CROSSOVER_PROB
        ):
            child, kind = mutate_architecture(child, context)
            mutations.append(kind)
        return Proposal(
            child, f"{self.name}.crossover", (first.number, second.number), metadata={**cuts, "mutations": mutations}
        )

    def reflect(self, context: OperatorContext) -> dict[str, Any] | None:
        """Conventional operators keep no notes."""
        return None


def _parent_arch(parent: TrialRecord) -> Architecture:
    """The parent's architecture; a record without one cannot be a parent."""
    arch = parent.architecture
    if arch is None:
        raise ProposalError(f"trial {parent.number} has no architecture to vary")
    return arch


__all__ = [
    "MUTATIONS",
    "RandomOperator",
    "crossover_architectures",
    "mutate_architecture",
    "random_architecture",
    "repair",
    "sample_architecture",
    "split",
]
