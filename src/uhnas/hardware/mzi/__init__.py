"""Coherent MZI-mesh photonic backend: constants (params), Clements meshes (mesh), device non-idealities (noise),
the energy, timing and resource model with its weight-stationary and time-multiplexed mappings (energy), and the
Backend with SVD tiling and chip constraints (backend). The network is simulated either by the torch reference
model (any device) or by the compiled CPU accelerator (Numba kernels: mesh_kernel, block_kernel, forward_kernel,
decompose_kernel), chosen by the preset's `simulator` and checked against each other by
`uhnas.hardware.testing.check_accelerator`."""

from uhnas.hardware.mzi.backend import FAMILY, MZIBackend
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
from uhnas.hardware.mzi.params import MZIParams

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
