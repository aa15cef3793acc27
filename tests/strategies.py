"""Hypothesis strategies: random *valid* architectures for a given input shape, built shape-aware."""

from __future__ import annotations

from hypothesis import strategies as st

from uhnas.arch import ACTIVATIONS


@st.composite
def architectures(draw: st.DrawFn, input_shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10) -> dict:
    """An architecture dict that analyze() accepts: conv/pool blocks, flatten, dense layers, classifier."""
    layers: list[dict] = []
    _, height, width = input_shape
    for _ in range(draw(st.integers(0, 2))):
        kernel = draw(st.integers(1, min(5, height)))
        padding = draw(st.integers(0, min(2, kernel)))
        stride = draw(st.integers(1, 2))
        out_channels = draw(st.integers(1, 12))
        layers.append(
            {
                "type": "conv2d",
                "out_channels": out_channels,
                "kernel": kernel,
                "stride": stride,
                "padding": padding,
                "bias": draw(st.booleans()),
            }
        )
        height = (height + 2 * padding - kernel) // stride + 1
        width = (width + 2 * padding - kernel) // stride + 1
        if draw(st.booleans()):
            layers.append({"type": "batchnorm"})
        layers.append({"type": "activation", "function": draw(st.sampled_from(ACTIVATIONS))})
        if min(height, width) >= 2 and draw(st.booleans()):
            kind = draw(st.sampled_from(["maxpool", "avgpool"]))
            layers.append({"type": kind, "kernel": 2})
            height, width = height // 2, width // 2
    layers.append({"type": "flatten"})
    for _ in range(draw(st.integers(0, 2))):
        layers.append({"type": "linear", "out_features": draw(st.integers(1, 40)), "bias": draw(st.booleans())})
        if draw(st.booleans()):
            layers.append({"type": "batchnorm"})
        layers.append({"type": "activation", "function": draw(st.sampled_from(ACTIVATIONS))})
        if draw(st.booleans()):
            layers.append({"type": "dropout", "p": draw(st.floats(0.0, 0.8))})
    layers.append({"type": "linear", "out_features": num_classes, "bias": draw(st.booleans())})
    return {"layers": layers}
