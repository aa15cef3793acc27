"""Canonical form, content hash and structural distance of architectures.

Two JSON texts that describe the same network (other whitespace, key order, defaults left out or
spelled out, other name or rationale) get the same canonical form and hash; the search uses the
hash to never train the same network twice, and the distance to measure population diversity.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from uhnas.arch.model import Architecture, AvgPool, Conv2d, Dropout, Linear, MaxPool

HASH_CHARS = 16  # 64 bits of sha256: collision odds are negligible for searches of < 1e6 candidates


def canonical_layers(arch: Architecture) -> list[dict[str, Any]]:
    """Layers with every default explicit and implied values resolved (pool stride = kernel)."""
    layers = []
    for layer in arch.layers:
        data = layer.model_dump()
        if isinstance(layer, (MaxPool, AvgPool)) and layer.stride is None:
            data["stride"] = layer.kernel
        layers.append(data)
    return layers


def canonical_json(arch: Architecture) -> str:
    """The network alone (no name, no rationale) as compact JSON with sorted keys."""
    return json.dumps(canonical_layers(arch), sort_keys=True, separators=(",", ":"))


def arch_hash(arch: Architecture) -> str:
    """Content hash of the canonical form: equal networks, equal hashes."""
    return hashlib.sha256(canonical_json(arch).encode()).hexdigest()[:HASH_CHARS]


def _log_ratio_cost(a: float, b: float) -> float:
    """Cost in [0, 1) of changing a size from a to b: grows with the log ratio, 0.5 at a factor of 2."""
    ratio = abs(math.log2(max(a, 1e-9) / max(b, 1e-9)))
    return ratio / (1.0 + ratio)


def layer_distance(a: Any, b: Any) -> float:
    """Substitution cost between two layers: 1 for different types, a size-aware fraction otherwise."""
    if a.type != b.type:
        return 1.0
    if isinstance(a, Linear):
        return _log_ratio_cost(a.out_features, b.out_features) + (0.1 if a.bias != b.bias else 0.0)
    if isinstance(a, Conv2d):
        cost = _log_ratio_cost(a.out_channels, b.out_channels)
        cost += 0.25 * sum(getattr(a, f) != getattr(b, f) for f in ("kernel", "stride", "padding"))
        return min(cost, 1.0)
    if isinstance(a, (MaxPool, AvgPool)):
        return 0.5 * ((a.kernel != b.kernel) + ((a.stride or a.kernel) != (b.stride or b.kernel)))
    if isinstance(a, Dropout):
        return min(abs(a.p - b.p), 1.0)
    if a.type == "activation":
        return 0.0 if a.function == b.function else 0.5
    return 0.0


def structural_distance(a: Architecture, b: Architecture) -> float:
    """Edit distance over layer sequences: insert/delete cost 1, substitution by `layer_distance`."""
    xs, ys = a.layers, b.layers
    previous = [float(j) for j in range(len(ys) + 1)]
    for i, x in enumerate(xs, start=1):
        current = [float(i)] + [0.0] * len(ys)
        for j, y in enumerate(ys, start=1):
            current[j] = min(previous[j] + 1.0, current[j - 1] + 1.0, previous[j - 1] + layer_distance(x, y))
        previous = current
    return previous[-1]
