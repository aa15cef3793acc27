"""The conventional search space, as data: the one definition the operators, the Optuna encoding and the
hypervolume reference networks share.

An architecture in the space is an optional conv segment (conv2d, pooling, activation, batchnorm, dropout), a
flatten for image inputs, and a flat segment (linear, activation, batchnorm, dropout) ending in the linear
classifier. Every hidden width, conv channel count, kernel, pool kernel and dropout probability is one of the
values below, and a network has at most `MAX_MATMULS` conv + linear layers. The space is deliberately modest so
a digits evaluation takes seconds; parents proposed by other operators (an LLM) may lie outside it and are edited
as they are.

Where a search starts is a subset: the random initializer and the Optuna encoding build at most `MAX_CONV` conv
blocks and `MAX_DENSE` hidden dense blocks, and the initializer draws widths from `INIT_WIDTHS` and kernels
from `INIT_KERNELS`; mutations reach the rest of the space.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from uhnas.arch import ACTIVATIONS as IR_ACTIVATIONS
from uhnas.arch import Architecture
from uhnas.arch.model import ActivationName, AvgPool, Conv2d, Dropout, Flatten, Linear, MaxPool

WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)  # hidden linear widths, ascending
CHANNELS: tuple[int, ...] = (4, 8, 16, 32, 64)  # conv output channels, ascending
KERNELS: tuple[int, ...] = (1, 3, 5)  # conv kernels, ascending, padding kernel // 2 ("same") or 0 ("valid")
POOL_KERNEL = 2  # max and average pools: 2x2, stride 2
DROPOUT_P: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)  # dropout probabilities
MAX_MATMULS = 6  # conv + linear layers, classifier included

MAX_CONV = 3  # conv blocks in an initial (random or Optuna-encoded) network
MAX_DENSE = 3  # hidden dense blocks in an initial network
INIT_WIDTHS: tuple[int, ...] = WIDTHS[2:]  # initial hidden widths (8 and 16 are reached by mutation)
INIT_KERNELS: tuple[int, ...] = (3, 5)  # initial conv kernels (1x1 is reached by mutation)

CONV_LAYERS = ("activation", "avgpool", "batchnorm", "conv2d", "dropout", "maxpool")  # sorted: sampling order
FLAT_LAYERS = ("activation", "batchnorm", "dropout", "linear")  # sorted: sampling order

ACTIVATIONS: tuple[ActivationName, ...] = tuple(IR_ACTIVATIONS)  # every activation the IR knows, in the IR's order
ACTIVATION_WEIGHTS = MappingProxyType(
    {
        "relu": 0.4,
        "gelu": 0.1,
        "tanh": 0.1,
        "leaky_relu": 0.1,
        "sigmoid": 0.1,
        "square": 0.1,
        "saturating": 0.1,
    }
)
"""Relative sampling weight of each activation (ReLU-heavy); normalised over the candidates of one draw."""
DEFAULT_ACTIVATION_WEIGHT = 0.1  # for an activation the IR gains before this table does

REFERENCE_ACTIVATION: Final = "relu"  # the activation of the reference corner networks


def outside_space(arch: Architecture) -> list[str]:
    """Why `arch` lies outside the conventional space, one reason per offending layer (empty: inside it).

    The classifier (the last layer, a linear one) may have any width; everything else must be a choice above.
    """
    reasons: list[str] = []
    layers = list(arch.layers)
    matmuls = sum(isinstance(layer, (Conv2d, Linear)) for layer in layers)
    if matmuls > MAX_MATMULS:
        reasons.append(f"{matmuls} conv + linear layers > MAX_MATMULS = {MAX_MATMULS}")
    if not layers or not isinstance(layers[-1], Linear):
        reasons.append("the last layer is not a linear classifier")
    flattened = not any(isinstance(layer, Flatten) for layer in layers)  # flat inputs have only a flat segment
    for i, layer in enumerate(layers):
        where = f"layer {i} ({layer.type})"
        if isinstance(layer, Flatten):
            if flattened:
                reasons.append(f"{where}: a second flatten")
            flattened = True
            continue
        if layer.type not in (FLAT_LAYERS if flattened else CONV_LAYERS):
            reasons.append(f"{where}: not in the {'flat' if flattened else 'conv'} segment's vocabulary")
        if isinstance(layer, Linear) and i < len(layers) - 1 and layer.out_features not in WIDTHS:
            reasons.append(f"{where}: out_features {layer.out_features} not in WIDTHS {WIDTHS}")
        elif isinstance(layer, Conv2d):
            if layer.out_channels not in CHANNELS:
                reasons.append(f"{where}: out_channels {layer.out_channels} not in CHANNELS {CHANNELS}")
            if layer.kernel not in KERNELS or layer.stride != 1 or layer.padding not in (0, layer.kernel // 2):
                reasons.append(f"{where}: kernel {layer.kernel} stride {layer.stride} padding {layer.padding}")
        elif (
            isinstance(layer, (MaxPool, AvgPool)) and not layer.kernel == (layer.stride or layer.kernel) == POOL_KERNEL
        ):
            reasons.append(f"{where}: kernel {layer.kernel} stride {layer.stride}, not {POOL_KERNEL}")
        elif isinstance(layer, Dropout) and layer.p not in DROPOUT_P:
            reasons.append(f"{where}: p {layer.p} not in DROPOUT_P {DROPOUT_P}")
    return reasons


__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_WEIGHTS",
    "CHANNELS",
    "CONV_LAYERS",
    "DEFAULT_ACTIVATION_WEIGHT",
    "DROPOUT_P",
    "FLAT_LAYERS",
    "INIT_KERNELS",
    "INIT_WIDTHS",
    "KERNELS",
    "MAX_CONV",
    "MAX_DENSE",
    "MAX_MATMULS",
    "POOL_KERNEL",
    "REFERENCE_ACTIVATION",
    "WIDTHS",
    "outside_space",
]
