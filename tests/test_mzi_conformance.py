"""The compiled CPU accelerator against the torch reference model (uhnas.hardware.testing.check_accelerator):
exact without non-idealities, statistically with them, for every preset."""

from __future__ import annotations

import pytest
import torch

from uhnas.hardware.mzi import MZIBackend
from uhnas.hardware.registry import BackendError, load_backend
from uhnas.hardware.testing import check_accelerator


def _pair(name: str, *overrides: str) -> tuple:
    return tuple(load_backend(name, [*overrides, f"simulator={s}"]) for s in ("compiled", "reference"))


@pytest.mark.parametrize("preset", ["mzi-realistic", "mzi-worst"])
def test_compiled_accelerator_matches_the_reference_model(preset: str) -> None:
    compiled, reference = _pair(preset)
    check_accelerator(compiled, reference, ideal=_pair("mzi-ideal"))


def test_the_check_catches_an_accelerator_that_is_off() -> None:
    compiled, _ = _pair("mzi-realistic")
    _, noisier = _pair("mzi-realistic", "phase_noise_std=0.2")
    with pytest.raises(AssertionError):
        check_accelerator(compiled, noisier)


def test_simulator_choice_is_explicit() -> None:
    cpu = torch.device("cpu")
    assert load_backend("mzi-realistic").uses_accelerator(cpu)  # type: ignore[attr-defined]
    reference = load_backend("mzi-realistic", ["simulator=reference"])
    assert isinstance(reference, MZIBackend) and not reference.uses_accelerator(cpu)
    compiled = load_backend("mzi-realistic", ["simulator=compiled"])
    assert isinstance(compiled, MZIBackend)
    with pytest.raises(BackendError, match="runs on the CPU"):
        compiled.uses_accelerator(torch.device("meta"))
    with pytest.raises(BackendError):
        load_backend("mzi-realistic", ["simulator=fast"])
