"""Seeds derived from the run seed and a candidate's identity, so every random choice is reproducible.

Hashing the parts (rather than adding offsets) keeps streams independent: candidate 3 of seed 1 and
candidate 1 of seed 3 never share a stream, and the order in which workers finish does not matter.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a torch generator is made: the search side never loads it
    import torch

SEED_BITS = 63  # torch.Generator.manual_seed accepts non-negative seeds below 2**63


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, e.g. derive_seed(run_seed, arch_hash, "mc")."""
    text = "\x1f".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def torch_generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by `derive_seed(*parts)`."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


def numpy_rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by `derive_seed(*parts)`."""
    return np.random.default_rng(derive_seed(*parts))
