"""The frozen hypervolume reference point: error 1.0 and the energy of the costliest network bounding the space.

Hypervolume is measured in (error, log10 nJ) against a point fixed when a run starts. Its energy coordinate is
the highest backend energy among networks that bound the conventional search space (`uhnas.search.space`): its
corner networks and fixed random draws of the initializer, plus `metrics.DEFAULT_ENERGY_MARGIN_DECADES`.
Costlier networks add nothing; the point depends only on backend and dataset, so values compare across
generations, methods and seeds.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from uhnas.arch import Architecture, ArchitectureError, analyze
from uhnas.arch.model import Activation, Conv2d, Flatten, Linear, MaxPool
from uhnas.hardware.card import BackendCard
from uhnas.metrics import DEFAULT_ENERGY_MARGIN_DECADES, reference_point
from uhnas.search.operators.random import sample_architecture
from uhnas.search.space import CHANNELS, KERNELS, MAX_CONV, MAX_MATMULS, POOL_KERNEL, REFERENCE_ACTIVATION, WIDTHS
from uhnas.seeding import numpy_rng

if TYPE_CHECKING:
    from uhnas.hardware.base import Backend

REFERENCE_SAMPLE = 256  # fixed random draws of the initializer that bound the space's energy
REFERENCE_STREAM = "hv-reference"  # seeding stream of those draws, independent of any run seed


def _block(layer: Linear | Conv2d, count: int) -> list[Any]:
    """`count` copies of (layer, activation)."""
    return [
        item for _ in range(count) for item in (layer, Activation(type="activation", function=REFERENCE_ACTIVATION))
    ]


def corner_architectures(input_shape: tuple[int, ...], num_classes: int) -> list[Architecture]:
    """The widest deepest MLP and, for images, the CNN with the most and widest conv layers that the parameter
    limit allows with as few 2x2 pools as possible."""
    image = len(input_shape) == 3
    widest = Linear(type="linear", out_features=WIDTHS[-1])
    head = [Linear(type="linear", out_features=num_classes)]
    archs = [Architecture(layers=([Flatten(type="flatten")] if image else []) + _block(widest, MAX_MATMULS - 1) + head)]
    if not image:
        return archs
    kernel = KERNELS[-1]
    convs = _block(Conv2d(type="conv2d", out_channels=CHANNELS[-1], kernel=kernel, padding=kernel // 2), MAX_CONV)
    dense = _block(widest, MAX_MATMULS - 1 - MAX_CONV)
    size, pools = min(input_shape[1:]), 0  # 'same' convs keep the map size; each pool divides it
    while True:
        cnn = Architecture(
            layers=convs
            + [MaxPool(type="maxpool", kernel=POOL_KERNEL)] * pools
            + [Flatten(type="flatten")]
            + dense
            + head
        )
        try:
            analyze(cnn, input_shape, num_classes)
        except ArchitectureError:
            if size < POOL_KERNEL:
                return archs  # too many parameters even with the map pooled away: no CNN corner
            size, pools = size // POOL_KERNEL, pools + 1
            continue
        return [*archs, cnn]


def reference_architectures(input_shape: tuple[int, ...], num_classes: int, card: BackendCard) -> list[Architecture]:
    """Networks that bound the conventional space's energy: its corners and REFERENCE_SAMPLE fixed random draws.

    Corners: the widest deepest MLP, and the CNN with the most and widest conv layers (as few 2x2 pools as the
    parameter limit allows). Energy is not monotone in size on every backend (an optical mesh's laser power grows
    with its depth), so fixed draws of the random initializer (streams independent of the run seed: every method
    and seed on a backend and dataset gets the same reference) cover the rest of the space. `card` is accepted
    for callers that bound per backend; the networks depend only on the dataset's shapes today.
    """
    draws = [
        sample_architecture(numpy_rng(REFERENCE_STREAM, draw), input_shape, num_classes)
        for draw in range(REFERENCE_SAMPLE)
    ]
    return corner_architectures(input_shape, num_classes) + draws


_COMPUTED: dict[str, dict[str, Any]] = {}  # (backend card, shapes) -> reference: every seed and method shares one


def hv_reference(backend: Backend, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The frozen hypervolume reference: error 1, log10 of the costliest reference network's energy + margin.

    Returns the point, its space, the reference energy and network, the margin and the rule in words (stored
    with the run's metadata). Computed once per process for a backend card (name and every constant) and dataset
    shape: the cells of a study on one backend reuse it instead of scoring the reference networks again.
    """
    card = backend.describe().to_dict()
    key = json.dumps([card["name"], card["constants"], list(input_shape), num_classes], sort_keys=True, default=str)
    if key not in _COMPUTED:
        _COMPUTED[key] = _compute_reference(backend, input_shape, num_classes)
    return copy.deepcopy(_COMPUTED[key])


def _compute_reference(backend: Backend, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """hv_reference without the cache."""
    best: tuple[float, Architecture] | None = None
    for arch in reference_architectures(input_shape, num_classes, backend.describe()):
        energy = backend.energy(analyze(arch, input_shape, num_classes)).total_nj
        if best is None or energy > best[0]:
            best = (energy, arch)
    assert best is not None  # the MLP corner always exists
    point = reference_point(best[0], DEFAULT_ENERGY_MARGIN_DECADES)
    return {
        "point": [float(point[0]), float(point[1])],
        "space": ["error", "log10_energy_nj"],
        "reference_energy_nj": best[0],
        "margin_decades": DEFAULT_ENERGY_MARGIN_DECADES,
        "reference_network": best[1].model_dump(mode="json"),
        "rule": (
            f"error 1.0; log10 of the highest backend energy among the conventional space's corner networks and "
            f"{REFERENCE_SAMPLE} fixed random draws of its initializer, plus the margin"
        ),
    }


__all__ = ["REFERENCE_SAMPLE", "corner_architectures", "hv_reference", "reference_architectures"]
