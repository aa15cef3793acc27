"""Numeric precision emulation: round tensors to fp16 / bf16 / int8 as a device stores them."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from uhnas.errors import BackendError

Precision = Literal["fp32", "fp16", "bf16", "int8"]
BYTES_PER_VALUE: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def quantize_symmetric(x: Tensor, bits: int, full_scale: Tensor | float | None = None) -> Tensor:
    """Uniform symmetric quantisation to `bits` bits over [-full_scale, full_scale] (default max |x|)."""
    levels = 2 ** (bits - 1) - 1
    scale = (
        x.detach().abs().amax() if full_scale is None else torch.as_tensor(full_scale, dtype=x.dtype, device=x.device)
    )
    scale = torch.clamp(scale, min=torch.finfo(x.dtype).tiny) / levels
    return torch.clamp(torch.round(x / scale), -levels, levels) * scale


def round_to(x: Tensor, precision: str) -> Tensor:
    """x as stored at `precision`, returned in x's dtype (fp32 arithmetic on emulated values)."""
    if precision == "fp32":
        return x
    if precision == "fp16":
        return x.to(torch.float16).to(x.dtype)
    if precision == "bf16":
        return x.to(torch.bfloat16).to(x.dtype)
    if precision == "int8":
        return quantize_symmetric(x, 8)
    raise BackendError(f"unknown precision {precision!r}; expected fp32, fp16, bf16 or int8")


def straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """Forward the quantised value, backpropagate as identity (straight-through estimator)."""
    return x + (quantized - x).detach()
