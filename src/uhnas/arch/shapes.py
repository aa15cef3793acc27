"""Shape, parameter and MAC inference: rejects impossible architectures before any training.

Every linear and conv layer is also described as a matrix (rows x cols) applied `reuse` times per
inference (once for linear, once per output pixel for conv via im2col). Hardware backends price
and map exactly these matrices, so the numbers here are the single source for energy models.
"""

from __future__ import annotations

from dataclasses import dataclass

from uhnas.arch.model import (
    MAX_MACS,
    MAX_PARAMS,
    Activation,
    Architecture,
    ArchitectureError,
    AvgPool,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool,
)

Shape = tuple[int, ...]

DATA_FREE_LAYERS = ("flatten", "dropout")
"""Layers that move no data at inference: a view (flatten) and an inference-time identity (dropout). Hardware
energy models charge them no arithmetic and no memory traffic."""


@dataclass(frozen=True)
class LayerInfo:
    """One layer after inference: output shape, trainable params, MACs and elementwise ops."""

    index: int
    type: str
    out_shape: Shape
    params: int
    macs: int
    ops: int  # non-MAC arithmetic per inference (activations, pooling, batchnorm), one per element touched
    matrix: tuple[int, int] | None = None  # (rows=out, cols=in) of the weight matrix for linear/conv
    reuse: int = 0  # matrix-vector products per inference (1 for linear, output pixels for conv)
    in_numel: int = 0

    @property
    def moves_data(self) -> bool:
        """False for the layers that leave their input in place at inference (`DATA_FREE_LAYERS`)."""
        return self.type not in DATA_FREE_LAYERS

    @property
    def out_numel(self) -> int:
        """Number of output activations per inference."""
        n = 1
        for d in self.out_shape:
            n *= d
        return n


@dataclass(frozen=True)
class ArchSummary:
    """Totals and per-layer facts of an architecture for a given input shape and class count."""

    input_shape: Shape
    num_classes: int
    layers: tuple[LayerInfo, ...]

    @property
    def params(self) -> int:
        """Trainable parameters in total."""
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per inference in linear and conv layers."""
        return sum(layer.macs for layer in self.layers)

    @property
    def ops(self) -> int:
        """Elementwise (non-MAC) operations per inference."""
        return sum(layer.ops for layer in self.layers)

    @property
    def matmuls(self) -> tuple[LayerInfo, ...]:
        """The linear and conv layers, in order: what a hardware backend maps onto its device."""
        return tuple(layer for layer in self.layers if layer.matrix is not None)


def _fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def _pool_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def analyze(arch: Architecture, input_shape: Shape, num_classes: int) -> ArchSummary:
    """Infer every layer's shape, params and MACs; raise ArchitectureError naming the first problem."""
    shape: Shape = tuple(input_shape)
    infos: list[LayerInfo] = []
    for index, layer in enumerate(arch.layers):
        where = f"layer {index} ({layer.type})"
        in_numel = _numel(shape)
        if isinstance(layer, Linear):
            if len(shape) != 1:
                raise ArchitectureError(f"{where}: input is {_fmt(shape)} (not flat); insert a flatten layer before it")
            (features,) = shape
            out = layer.out_features
            params = features * out + (out if layer.bias else 0)
            infos.append(LayerInfo(index, layer.type, (out,), params, features * out, 0, (out, features), 1, in_numel))
            shape = (out,)
        elif isinstance(layer, Conv2d):
            if len(shape) != 3:
                raise ArchitectureError(f"{where}: input is flat ({_fmt(shape)}); conv2d needs a C x H x W input")
            channels, height, width = shape
            if layer.kernel > min(height, width) + 2 * layer.padding:
                raise ArchitectureError(
                    f"{where}: kernel {layer.kernel} is larger than the padded input "
                    f"{height + 2 * layer.padding}x{width + 2 * layer.padding}"
                )
            h_out = _pool_out(height, layer.kernel, layer.stride, layer.padding)
            w_out = _pool_out(width, layer.kernel, layer.stride, layer.padding)
            cols = channels * layer.kernel * layer.kernel
            out_c = layer.out_channels
            params = out_c * cols + (out_c if layer.bias else 0)
            pixels = h_out * w_out
            infos.append(
                LayerInfo(
                    index,
                    layer.type,
                    (out_c, h_out, w_out),
                    params,
                    out_c * cols * pixels,
                    0,
                    (out_c, cols),
                    pixels,
                    in_numel,
                )
            )
            shape = (out_c, h_out, w_out)
        elif isinstance(layer, (MaxPool, AvgPool)):
            if len(shape) != 3:
                raise ArchitectureError(f"{where}: input is flat ({_fmt(shape)}); pooling needs a C x H x W input")
            channels, height, width = shape
            stride = layer.stride or layer.kernel
            if layer.kernel > min(height, width):
                raise ArchitectureError(f"{where}: kernel {layer.kernel} is larger than the input {height}x{width}")
            new = (channels, _pool_out(height, layer.kernel, stride), _pool_out(width, layer.kernel, stride))
            infos.append(
                LayerInfo(index, layer.type, new, 0, 0, _numel(new) * layer.kernel * layer.kernel, None, 0, in_numel)
            )
            shape = new
        elif isinstance(layer, Flatten):
            if len(shape) == 1:
                raise ArchitectureError(f"{where}: input is already flat ({_fmt(shape)}); remove this layer")
            shape = (_numel(shape),)
            infos.append(LayerInfo(index, layer.type, shape, 0, 0, 0, None, 0, in_numel))
        elif isinstance(layer, BatchNorm):
            features = shape[0]
            infos.append(LayerInfo(index, layer.type, shape, 2 * features, 0, 2 * in_numel, None, 0, in_numel))
        elif isinstance(layer, Activation):
            infos.append(LayerInfo(index, layer.type, shape, 0, 0, in_numel, None, 0, in_numel))
        elif isinstance(layer, Dropout):
            infos.append(LayerInfo(index, layer.type, shape, 0, 0, 0, None, 0, in_numel))
        else:  # pragma: no cover - the discriminated union admits nothing else
            raise ArchitectureError(f"{where}: unsupported layer")
    summary = ArchSummary(tuple(input_shape), num_classes, tuple(infos))
    if shape != (num_classes,):
        raise ArchitectureError(
            f"output shape is {_fmt(shape)} but the dataset has {num_classes} classes: "
            f"end with a linear layer of out_features={num_classes}"
        )
    if summary.params > MAX_PARAMS:
        raise ArchitectureError(f"{summary.params:,} parameters exceed the limit of {MAX_PARAMS:,}")
    if summary.macs > MAX_MACS:
        raise ArchitectureError(f"{summary.macs:,} MACs per inference exceed the limit of {MAX_MACS:,}")
    return summary
