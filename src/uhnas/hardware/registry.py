"""Backend presets (YAML: every constant with unit and source) and the registry of backend families.

A family (digital, mzi, ...) is registered under the entry-point group `uhnas.backends` as a
`BackendFamily`; its presets are YAML files in the family's presets directory. `load_backend` takes a
preset name or a path to a YAML file, plus `key=value` overrides, and returns a ready Backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from uhnas.errors import BackendError
from uhnas.hardware.base import Backend

ENTRY_POINT_GROUP = "uhnas.backends"
OVERRIDE_SOURCE = "user override"


class Constant(BaseModel):
    """One preset constant: its value, unit and where the figure comes from."""

    model_config = ConfigDict(extra="forbid")
    value: Any
    unit: str = ""
    source: str


class Preset(BaseModel):
    """A backend preset: the family that interprets it and its sourced constants."""

    model_config = ConfigDict(extra="forbid")
    name: str
    family: str
    description: str
    constants: dict[str, Constant]

    def values(self) -> dict[str, Any]:
        """Constant name -> value, for the family's parameter model."""
        return {key: c.value for key, c in self.constants.items()}

    def card_constants(self) -> dict[str, dict[str, Any]]:
        """Constant name -> {value, unit, source}, for the backend card."""
        return {key: c.model_dump() for key, c in self.constants.items()}


@dataclass(frozen=True)
class BackendFamily:
    """A hardware family: how to build a backend from a preset, and where its presets live."""

    name: str
    build: Callable[[Preset], Backend]
    presets_dir: Path | None = None


@lru_cache(maxsize=1)
def _discover() -> tuple[dict[str, BackendFamily], dict[str, str]]:
    """Load every `uhnas.backends` entry point; a broken plugin is reported, not fatal."""
    found: dict[str, BackendFamily] = {}
    broken: dict[str, str] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = point.load()
        except Exception as error:  # a third-party plugin may fail in any way; keep the others usable
            broken[point.name] = f"{point.value}: {type(error).__name__}: {error}"
            continue
        if not isinstance(family, BackendFamily):
            broken[point.name] = f"{point.value}: not a uhnas BackendFamily"
            continue
        found[family.name] = family
    return found, broken


def families() -> dict[str, BackendFamily]:
    """All installed backend families, found through the `uhnas.backends` entry points."""
    return _discover()[0]


def broken_families() -> dict[str, str]:
    """Entry points that failed to load, with the reason (shown by `uhnas backends`)."""
    return _discover()[1]


def _broken_note() -> str:
    """'; plugins that failed to load: name (entry point: error), ...' or '' — so a broken plugin is not hidden."""
    broken = broken_families()
    if not broken:
        return ""
    return "; plugins that failed to load: " + ", ".join(
        f"{name} ({reason})" for name, reason in sorted(broken.items())
    )


def _read_preset(path: Path) -> Preset:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendError(f"{path}: no such backend file") from None
    except (OSError, yaml.YAMLError) as error:
        raise BackendError(f"{path}: cannot read YAML: {str(error).splitlines()[0]}") from None
    try:
        return Preset.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "preset"
        raise BackendError(f"{path}: {where}: {first['msg']}") from None


def preset_paths() -> dict[str, Path]:
    """Preset name -> YAML path, over all installed families."""
    paths: dict[str, Path] = {}
    for family in families().values():
        if family.presets_dir is None:
            continue
        for path in sorted(family.presets_dir.glob("*.yaml")):
            paths[path.stem] = path
    return paths


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, YAML-typed value), e.g. 'phase_noise_std=0.05' -> ('phase_noise_std', 0.05)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BackendError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(preset: Preset, overrides: Iterable[str] | dict[str, Any]) -> Preset:
    """A copy of the preset with constants replaced; unknown keys are an error listing the known ones."""
    pairs = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    constants = dict(preset.constants)
    for key, value in pairs:
        if key not in constants:
            raise BackendError(
                f"backend {preset.name!r} has no constant {key!r}; known: {', '.join(sorted(constants))}"
            )
        constants[key] = Constant(value=value, unit=constants[key].unit, source=OVERRIDE_SOURCE)
    return preset.model_copy(update={"constants": constants})


def load_preset(spec: str) -> Preset:
    """A preset by name (installed) or by path to a YAML file."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.exists():
        return _read_preset(path)
    paths = preset_paths()
    if spec not in paths:
        raise BackendError(
            f"unknown backend {spec!r}; installed: {', '.join(sorted(paths))} (or pass a YAML file)" + _broken_note()
        )
    return _read_preset(paths[spec])


def load_backend(spec: str, overrides: Iterable[str] | dict[str, Any] = ()) -> Backend:
    """Build a backend from a preset name or YAML path, with optional key=value overrides."""
    preset = apply_overrides(load_preset(spec), overrides)
    family = families().get(preset.family)
    if family is None:
        raise BackendError(
            f"backend {preset.name!r} needs family {preset.family!r}, which is not installed; installed: "
            f"{', '.join(sorted(families()))}" + _broken_note()
        )
    return family.build(preset)


def available_backends() -> list[str]:
    """Names of all installed presets."""
    return sorted(preset_paths())


def validate_params(model: type[BaseModel], preset: Preset) -> Any:
    """Validate a preset's constant values against a family's parameter model, one-line errors."""
    try:
        return model.model_validate(preset.values())
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "constants"
        raise BackendError(f"backend {preset.name!r}: {where}: {first['msg']}") from None
