"""Build an Architecture into a torch module whose linear and conv layers are hardware-substitutable.

The seam: every linear or conv layer is a `MatMul` module. Normally it runs as torch's own linear /
conv. When a hardware backend attaches a *program* to it, the layer instead hands its input as rows
of a matrix product — shape (draws, rows, in_features), with conv inputs unfolded by im2col (a strided
view; programs must accept any strides) — to the program, which returns (draws, rows, out_features) as
the device computes it (noise, quantisation, tiling, ...). The rest of the network (activations,
pooling, batchnorm) runs digitally on the batch with draws folded into it, so one forward pass
evaluates `draws` Monte-Carlo realisations at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from uhnas.arch.model import (
    Activation,
    Architecture,
    AvgPool,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool,
)
from uhnas.arch.shapes import ArchSummary, Shape, analyze

Program = Callable[[Tensor], Tensor]
"""A device program: rows (draws, n, in_features) -> outputs (draws, n, out_features), bias included.

A program with the attribute ``takes_windows = True`` gets a conv layer's input as its im2col windows instead: a
strided (draws, B, h_out, w_out, C, k, k) view of the zero-padded activations (vectors (image, y, x), columns in
the weight matrix's (C, k, k) order; nothing unfolded or copied), and returns (draws, B, out_channels, h_out, w_out).
"""


class Square(nn.Module):
    """|x|^2: the intensity a photodetector measures of a (real) field amplitude."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x


class Saturating(nn.Module):
    """x / (1 + |x|): smooth gain saturation, bounded in (-1, 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x / (1.0 + x.abs())


class FastMaxPool2d(nn.MaxPool2d):
    """Max pooling; without autograd as pairwise maxima of strided views, first along rows then along columns (the
    same values, ~10x faster than torch's CPU kernel on the Monte-Carlo batches: draws x images of small maps); with
    autograd torch's own."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        k, s = int(self.kernel_size), int(self.stride)  # type: ignore[call-overload,arg-type]
        rows, cols = (x.shape[-2] - k) // s + 1, (x.shape[-1] - k) // s + 1
        across = _max_of([x[..., j : j + s * (cols - 1) + 1 : s] for j in range(k)])  # k - 1 maxima, not k^2 - 1
        return _max_of([across[..., i : i + s * (rows - 1) + 1 : s, :] for i in range(k)])


def _max_of(views: list[Tensor]) -> Tensor:
    """Elementwise maximum of two or more tensors of one shape (the IR's pooling kernels are >= 2)."""
    out = torch.maximum(views[0], views[1])
    for view in views[2:]:
        torch.maximum(out, view, out=out)
    return out


def _activation(name: str) -> nn.Module:
    table: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "square": Square,
        "saturating": Saturating,
    }
    return table[name]()


class MatMul(nn.Module):
    """A linear or conv layer that a hardware backend can replace by what its device computes."""

    def __init__(self, op: nn.Linear | nn.Conv2d, index: int) -> None:
        super().__init__()
        self.op = op
        self.index = index  # position in the architecture's layer list
        self.program: Program | None = None
        self.draws = 1

    @property
    def kind(self) -> str:
        """'linear' or 'conv2d'."""
        return "linear" if isinstance(self.op, nn.Linear) else "conv2d"

    @property
    def weight(self) -> Tensor:
        """The raw weight parameter (linear: out x in; conv: out x C x k x k)."""
        return self.op.weight

    @property
    def bias(self) -> Tensor | None:
        """The bias parameter, or None."""
        return self.op.bias

    def matrix(self) -> Tensor:
        """The weight as the matrix a device multiplies by: out x in (conv: out x C*k*k, im2col order)."""
        return self.op.weight.reshape(self.op.weight.shape[0], -1)

    def forward(self, x: Tensor, *, shared_input: bool = False) -> Tensor:
        """The layer on its own (no program), or through its program for `draws` draws folded into the batch.

        ``shared_input``: x holds the batch once, the same for every draw (nothing draw-dependent ran before this
        layer); the program then gets rows whose draw axis has stride 0, so it can process the inputs once.
        """
        if self.program is None:
            return self.op(x)
        if isinstance(self.op, nn.Linear):
            if shared_input:
                rows = x.reshape(1, -1, x.shape[-1]).expand(self.draws, -1, -1)
                return self.program(rows).reshape(self.draws * x.shape[0], -1)
            rows = x.reshape(self.draws, -1, x.shape[-1])
            return self.program(rows).reshape(x.shape[0], -1)
        conv = self.op
        batch, channels, height, width = x.shape
        kernel, stride, padding = int(conv.kernel_size[0]), int(conv.stride[0]), int(conv.padding[0])  # type: ignore[arg-type]
        h_out = (height + 2 * padding - kernel) // stride + 1
        w_out = (width + 2 * padding - kernel) // stride + 1
        x_draws = 1 if shared_input else self.draws
        per_draw = batch // x_draws
        if getattr(self.program, "takes_windows", False):
            padded = nn.functional.pad(x, (padding,) * 4) if padding else x
            windows = padded.reshape(x_draws, per_draw, channels, height + 2 * padding, width + 2 * padding)
            windows = windows.unfold(3, kernel, stride).unfold(4, kernel, stride).permute(0, 1, 3, 4, 2, 5, 6)
            out = self.program(windows.expand(self.draws, *windows.shape[1:]))  # (draws, B, out_channels, h, w)
            return out.reshape(self.draws * per_draw, -1, h_out, w_out)
        # im2col with the batch innermost: (draws B, C, H, W) -> zero-padded (C, draws, H', W', B), whose k x k
        # windows copy as long contiguous runs into (C k k, draws, L B); the program gets rows as a (draws, L B, C k k)
        # view of that, vectors ordered (output pixel, image) within a draw (a program maps each row on its own)
        padded = x.new_zeros((channels, x_draws, height + 2 * padding, width + 2 * padding, per_draw))
        padded[:, :, padding : padding + height, padding : padding + width] = x.reshape(
            x_draws, per_draw, channels, height, width
        ).permute(2, 0, 3, 4, 1)
        windows = padded.unfold(2, kernel, stride).unfold(3, kernel, stride)  # (C, draws, h_out, w_out, B, k, k)
        cols = windows.permute(0, 5, 6, 1, 2, 3, 4).reshape(channels * kernel * kernel, x_draws, -1)
        out = self.program(cols.permute(1, 2, 0).expand(self.draws, -1, -1))  # (draws, h_out w_out B, out_channels)
        out = out.reshape(self.draws, h_out, w_out, per_draw, -1).permute(0, 3, 4, 1, 2)
        return out.reshape(self.draws * per_draw, -1, h_out, w_out)


class Network(nn.Sequential):
    """The built network: an nn.Sequential whose linear/conv layers are `MatMul` seams."""

    def __init__(
        self, modules: list[nn.Module], input_shape: Shape, num_classes: int, summary: ArchSummary | None = None
    ) -> None:
        super().__init__(*modules)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.summary = summary  # shapes, MACs and matrices of the layers (None for a hand-assembled Network)

    def widest_per_sample(self) -> int:
        """Elements of the largest tensor one input sample makes in a device forward pass: the input, a layer's
        output, or a conv layer's unfolded windows (in x k x k values per output pixel: backends compute a conv as
        rows of its im2col matrix). 0 when unknown (no summary)."""
        if self.summary is None:
            return 0
        sizes = [math.prod(self.input_shape)]
        for layer in self.summary.layers:
            sizes.append(layer.out_numel)
            if layer.matrix is not None:
                sizes.append(layer.matrix[1] * layer.reuse)
        return max(sizes)

    def matmuls(self) -> list[MatMul]:
        """The hardware-mapped layers in order."""
        return [m for m in self if isinstance(m, MatMul)]


def build(arch: Architecture, input_shape: Shape, num_classes: int, *, seed: int | None = None) -> Network:
    """Build a torch module for the architecture (validated first); `seed` fixes the initial weights."""
    summary = analyze(arch, input_shape, num_classes)
    modules: list[nn.Module] = []
    shape = tuple(input_shape)
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        for index, (layer, info) in enumerate(zip(arch.layers, summary.layers)):
            if isinstance(layer, Linear):
                modules.append(MatMul(nn.Linear(shape[0], layer.out_features, bias=layer.bias), index))
            elif isinstance(layer, Conv2d):
                conv = nn.Conv2d(
                    shape[0], layer.out_channels, layer.kernel, layer.stride, layer.padding, bias=layer.bias
                )
                modules.append(MatMul(conv, index))
            elif isinstance(layer, MaxPool):
                modules.append(FastMaxPool2d(layer.kernel, layer.stride or layer.kernel))
            elif isinstance(layer, AvgPool):
                modules.append(nn.AvgPool2d(layer.kernel, layer.stride or layer.kernel))
            elif isinstance(layer, Flatten):
                modules.append(nn.Flatten())
            elif isinstance(layer, Activation):
                modules.append(_activation(layer.function))
            elif isinstance(layer, BatchNorm):
                modules.append(nn.BatchNorm1d(shape[0]) if len(shape) == 1 else nn.BatchNorm2d(shape[0]))
            elif isinstance(layer, Dropout):
                modules.append(nn.Dropout(layer.p))
            shape = info.out_shape
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
    return Network(modules, input_shape, num_classes, summary)


@contextmanager
def attached(model: Network, programs: Mapping[int, Program], draws: int) -> Iterator[None]:
    """Temporarily route the layers at the given architecture indices through device programs."""
    layers = {m.index: m for m in model.matmuls()}
    unknown = set(programs) - set(layers)
    if unknown:
        raise KeyError(f"no linear/conv layer at index {sorted(unknown)}")
    try:
        for index, program in programs.items():
            layers[index].program = program
            layers[index].draws = draws
        yield
    finally:
        for index in programs:
            layers[index].program = None
            layers[index].draws = 1


def forward_draws(model: Network, programs: Mapping[int, Program], draws: int, x: Tensor) -> Tensor:
    """Run a batch through `draws` device realisations at once: (batch, ...) -> (draws, batch, classes).

    Layers before the first one with a program compute the same for every draw, so they run on the batch once and
    that layer gets its input shared across draws (in eval mode; in train mode dropout could differ per draw).
    """
    shared = draws == 1 or not model.training
    out = x if shared else x.unsqueeze(0).expand(draws, *x.shape).reshape(draws * x.shape[0], *x.shape[1:])
    with attached(model, programs, draws):
        for module in model:
            if shared and isinstance(module, MatMul) and module.program is not None:
                out = module(out, shared_input=True)
                shared = False
            else:
                out = module(out)
    if shared:  # no layer has a program: every draw computes the plain network
        out = out.unsqueeze(0).expand(draws, *out.shape)
    return out.reshape(draws, x.shape[0], -1)
