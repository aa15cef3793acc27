"""Architecture IR: typed layers, schema, shape inference, canonical hash, distance (no torch).

The torch build of an architecture (`build`, the `MatMul` seams, `forward_draws`) is `uhnas.arch.build`,
imported only where a network is trained or simulated, so reading, checking and hashing architectures (the
search, its operators, the LLM layer) never loads torch.
"""

from uhnas.arch.canonical import arch_hash, canonical_json, structural_distance
from uhnas.arch.model import (
    ACTIVATIONS,
    LAYER_TYPES,
    Architecture,
    load_architecture,
    parse_architecture,
    parse_architecture_json,
    to_json,
)
from uhnas.arch.schema import architecture_schema
from uhnas.arch.shapes import DATA_FREE_LAYERS, ArchSummary, LayerInfo, analyze
from uhnas.errors import ArchitectureError

__all__ = [
    "ACTIVATIONS",
    "DATA_FREE_LAYERS",
    "LAYER_TYPES",
    "ArchSummary",
    "Architecture",
    "ArchitectureError",
    "LayerInfo",
    "analyze",
    "arch_hash",
    "architecture_schema",
    "canonical_json",
    "load_architecture",
    "parse_architecture",
    "parse_architecture_json",
    "structural_distance",
    "to_json",
]
