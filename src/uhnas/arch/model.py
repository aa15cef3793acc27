"""The architecture IR: an ordered list of typed layers, validated by pydantic.

An architecture is data (JSON), never code: language models write it, the search stores it, and
`uhnas.arch.build` turns it into a torch module. The input shape and the class count come from the
dataset, so the same JSON can be checked against digits (1x8x8) or MNIST (1x28x28).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from uhnas.errors import ArchitectureError

# Limits: sized so that every candidate of a search on digits/MNIST trains in seconds to minutes on
# one CPU core, and so that an LLM cannot ask for a network that exhausts a worker's memory.
# They are design choices of uhnas (no external source); `uhnas arch schema` publishes them.
MAX_LAYERS = 32
MAX_WIDTH = 2048  # linear out_features
MAX_CHANNELS = 256  # conv2d out_channels
MAX_KERNEL = 7
MAX_STRIDE = 3
MAX_PADDING = 3
MAX_POOL = 4
MAX_DROPOUT = 0.8
MAX_PARAMS = 5_000_000  # trainable parameters, checked by shape inference
MAX_MACS = 200_000_000  # multiply-accumulates per inference, checked by shape inference
MAX_TEXT = 2000  # rationale length in characters
MAX_NAME = 80

ActivationName = Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu", "square", "saturating"]
ACTIVATIONS: tuple[ActivationName, ...] = get_args(ActivationName)
"""Activation vocabulary. `square` is |x|^2, what a photodetector measures of an optical field;
`saturating` is x / (1 + |x|), a smooth gain saturation (saturable absorber / amplifier)."""


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Linear(_Layer):
    """Fully connected layer on a flat input; mapped to hardware as one matrix."""

    type: Literal["linear"]
    out_features: Annotated[int, Field(ge=1, le=MAX_WIDTH)]
    bias: bool = True


class Conv2d(_Layer):
    """2-D convolution; mapped to hardware as its im2col matrix (out x in*k*k)."""

    type: Literal["conv2d"]
    out_channels: Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
    kernel: Annotated[int, Field(ge=1, le=MAX_KERNEL)]
    stride: Annotated[int, Field(ge=1, le=MAX_STRIDE)] = 1
    padding: Annotated[int, Field(ge=0, le=MAX_PADDING)] = 0
    bias: bool = True


class MaxPool(_Layer):
    """Max pooling over kernel x kernel windows (stride defaults to the kernel)."""

    type: Literal["maxpool"]
    kernel: Annotated[int, Field(ge=2, le=MAX_POOL)]
    stride: Annotated[int, Field(ge=1, le=MAX_POOL)] | None = None


class AvgPool(_Layer):
    """Average pooling over kernel x kernel windows (stride defaults to the kernel)."""

    type: Literal["avgpool"]
    kernel: Annotated[int, Field(ge=2, le=MAX_POOL)]
    stride: Annotated[int, Field(ge=1, le=MAX_POOL)] | None = None


class Flatten(_Layer):
    """Flattens C x H x W to a vector; required before the first linear layer after convolutions."""

    type: Literal["flatten"]


class Activation(_Layer):
    """Elementwise nonlinearity from the fixed vocabulary `ACTIVATIONS`."""

    type: Literal["activation"]
    function: ActivationName


class BatchNorm(_Layer):
    """Batch normalisation over features (flat input) or channels (image input)."""

    type: Literal["batchnorm"]


class Dropout(_Layer):
    """Dropout with probability p during training; identity at inference."""

    type: Literal["dropout"]
    p: Annotated[float, Field(ge=0.0, le=MAX_DROPOUT)] = 0.5


Layer = Annotated[
    Linear | Conv2d | MaxPool | AvgPool | Flatten | Activation | BatchNorm | Dropout,
    Field(discriminator="type"),
]
LAYER_TYPES: tuple[str, ...] = (
    "linear",
    "conv2d",
    "maxpool",
    "avgpool",
    "flatten",
    "activation",
    "batchnorm",
    "dropout",
)


class Architecture(BaseModel):
    """A feed-forward network: layers in order, plus an optional name and free-text rationale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(max_length=MAX_NAME)] | None = None
    rationale: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    layers: Annotated[list[Layer], Field(min_length=1, max_length=MAX_LAYERS)]


def _describe_location(loc: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic error location into 'layer 3 (conv2d): kernel' style text."""
    if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
        index = loc[1]
        layer_type = "?"
        if isinstance(data, dict) and isinstance(data.get("layers"), list) and index < len(data["layers"]):
            item = data["layers"][index]
            if isinstance(item, dict):
                layer_type = str(item.get("type", "missing type"))
        rest = [str(p) for p in loc[2:] if p not in LAYER_TYPES]
        field = ".".join(rest)
        return f"layer {index} ({layer_type})" + (f": {field}" if field else "")
    return ".".join(str(p) for p in loc) or "architecture"


def format_validation_error(error: ValidationError, data: Any) -> str:
    """One line naming the first problem (layer index and field) and how many more there are."""
    errors = error.errors(include_url=False)
    first = errors[0]
    where = _describe_location(tuple(first["loc"]), data)
    message = first["msg"]
    if first["type"] == "union_tag_invalid":
        message = f"unknown layer type; expected one of {', '.join(LAYER_TYPES)}"
    elif first["type"] == "union_tag_not_found":
        message = "missing 'type'; expected one of " + ", ".join(LAYER_TYPES)
    elif first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


def parse_architecture(data: Any) -> Architecture:
    """Validate a decoded JSON value as an Architecture, raising ArchitectureError with one line."""
    if not isinstance(data, dict):
        raise ArchitectureError(f"architecture must be a JSON object, got {type(data).__name__}")
    try:
        return Architecture.model_validate(data)
    except ValidationError as error:
        raise ArchitectureError(format_validation_error(error, data)) from None


def parse_architecture_json(text: str, source: str = "architecture") -> Architecture:
    """Parse JSON text into an Architecture; errors name the source and the line/column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArchitectureError(
            f"{source}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    try:
        return parse_architecture(data)
    except ArchitectureError as error:
        raise ArchitectureError(f"{source}: {error}") from None


def load_architecture(path: str | Path) -> Architecture:
    """Read and validate an architecture JSON file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchitectureError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ArchitectureError(f"{path}: cannot read: {error}") from None
    return parse_architecture_json(text, source=str(path))


def to_json(arch: Architecture, indent: int | None = 2) -> str:
    """Serialise with every default explicit, so the file documents the whole network."""
    return arch.model_dump_json(indent=indent)
