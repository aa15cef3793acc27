"""Coherent MZI-mesh photonic backend: Clements meshes (mesh), device non-idealities (noise), energy model
(energy) and the Backend implementation with SVD tiling and constraints (backend)."""

from uhnas.hardware.mzi.backend import FAMILY, MZIBackend, MZIParams
from uhnas.hardware.mzi.mesh import (
    ChipErrors,
    MeshNoise,
    MeshPhases,
    MeshStack,
    clements_decompose,
    clements_decompose_many,
    mesh_matrices,
    mesh_matrix,
    sample_chip,
)

__all__ = [
    "FAMILY",
    "ChipErrors",
    "MZIBackend",
    "MZIParams",
    "MeshNoise",
    "MeshPhases",
    "MeshStack",
    "clements_decompose",
    "clements_decompose_many",
    "mesh_matrices",
    "mesh_matrix",
    "sample_chip",
]
