"""Analog in-memory crossbar family (PCM / RRAM): a readable torch reference model of devices, periphery and energy.

`backend.CrossbarBackend` is the Backend; `devices` the conductance model, `periphery` the converters and tiled
matrix-vector product, `energy` the analytical energy / latency / resource model, `params` the constants.
"""

from uhnas.hardware.crossbar.backend import FAMILY, CrossbarBackend, is_ideal
from uhnas.hardware.crossbar.devices import column_scales, sample_weights, target_conductances
from uhnas.hardware.crossbar.params import CrossbarParams
from uhnas.hardware.crossbar.periphery import tiled_forward

__all__ = [
    "FAMILY",
    "CrossbarBackend",
    "CrossbarParams",
    "column_scales",
    "is_ideal",
    "sample_weights",
    "target_conductances",
    "tiled_forward",
]
