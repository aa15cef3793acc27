"""Architecture IR: typed layers, schema, shape inference, torch build, canonical hash, distance."""

from uhnas.arch.build import MatMul, Network, Program, attached, build, forward_draws
from uhnas.arch.canonical import arch_hash, canonical_json, structural_distance
from uhnas.arch.model import (
    ACTIVATIONS,
    LAYER_TYPES,
    Architecture,
    ArchitectureError,
    load_architecture,
    parse_architecture,
    parse_architecture_json,
    to_json,
)
from uhnas.arch.schema import architecture_schema
from uhnas.arch.shapes import DATA_FREE_LAYERS, ArchSummary, LayerInfo, analyze

__all__ = [
    "ACTIVATIONS",
    "DATA_FREE_LAYERS",
    "LAYER_TYPES",
    "ArchSummary",
    "Architecture",
    "ArchitectureError",
    "LayerInfo",
    "MatMul",
    "Network",
    "Program",
    "analyze",
    "arch_hash",
    "architecture_schema",
    "attached",
    "build",
    "canonical_json",
    "forward_draws",
    "load_architecture",
    "parse_architecture",
    "parse_architecture_json",
    "structural_distance",
    "to_json",
]
