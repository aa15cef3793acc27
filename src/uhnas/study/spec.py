"""The study file: a base run configuration plus a grid of axes to vary, validated like a run configuration.

```yaml
name: baselines                       # optional; default: the file's stem
base: {dataset: digits, population: 20, ...}   # a run config (or the path of one, relative to this file)
grid:                                 # every combination of these values is one cell (one ordinary run)
  backend: [mzi-realistic, {preset: mzi-realistic, overrides: [phase_noise_std=0.05], label: mzi-noisy}]
  method: [nsga2, random]
  seed: 5                             # a list of seeds, or a count n meaning 0..n-1
exclude: [{method: random, backend: mzi-noisy}]   # optional: drop the cells matching all given axis values
report: {paired: true}                # optional: Wilcoxon signed-rank when seeds are paired across groups
```

Unknown keys fail at load time with one line naming the file and key path (``study.yaml: grid.backnd: unknown
key``), as for run configs; `uhnas.config` supplies the messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from uhnas.config import RunConfig, _location, _message, apply_overrides, parse_override, read_yaml
from uhnas.errors import ConfigError

# axis name in the study file -> key path in the run config, in the order cell ids and tables list them
AXES: dict[str, str] = {
    "dataset": "dataset",
    "backend": "backend",
    "method": "method",
    "llm.system_prompt": "llm.system_prompt",
    "objective": "objective",
    "training.noise_aware": "training.noise_aware",
    "population": "population",
    "generations": "generations",
    "offspring": "offspring",
    "training.epochs": "training.epochs",
    "mc": "mc",
    "seed": "seed",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class BackendEntry(_Model):
    """A backend axis value with constant overrides; `label` names it in cell ids and reports."""

    preset: str
    overrides: list[str] = Field(default_factory=list)
    label: str | None = None


def _unique(values: list[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    if not values:
        raise ValueError("must list at least one value")
    seen = [v.model_dump() if isinstance(v, BaseModel) else v for v in values]
    if len({yaml.safe_dump(v) for v in seen}) != len(seen):
        raise ValueError("lists a value twice")
    return values


class GridSpec(_Model):
    """The axes a study varies; each lists values (an omitted axis keeps the base config's value)."""

    dataset: list[str] | None = None
    backend: list[str | BackendEntry] | None = None
    method: list[str] | None = None
    system_prompt: list[Literal["hardware-aware", "generic", "minimal"]] | None = Field(
        default=None, alias="llm.system_prompt"
    )
    objective: list[Literal["mean", "clean", "p5"]] | None = None
    noise_aware: list[bool] | None = Field(default=None, alias="training.noise_aware")
    population: list[int] | None = None
    generations: list[int] | None = None
    offspring: list[int] | None = None
    epochs: list[int] | None = Field(default=None, alias="training.epochs")
    mc: list[int] | None = None
    seed: list[int] | int | None = None

    @field_validator("seed")
    @classmethod
    def _seeds(cls, value: list[int] | int | None) -> list[int] | None:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("a seed count must be at least 1")
            return list(range(value))
        return _unique(value)

    @field_validator(
        "dataset", "backend", "method", "system_prompt", "objective", "noise_aware", "population", "generations"
    )
    @classmethod
    def _lists(cls, value: list[Any] | None) -> list[Any] | None:
        return _unique(value)

    @field_validator("offspring", "epochs", "mc")
    @classmethod
    def _budget(cls, value: list[int] | None) -> list[int] | None:
        return _unique(value)

    def axes(self) -> dict[str, list[Any]]:
        """The varied axes (study-file names) and their values, in AXES order."""
        by_alias = self.model_dump(by_alias=True, exclude_none=True)
        values = {name: list(getattr(self, _field(name))) for name in AXES if name in by_alias}
        return values


def _field(axis: str) -> str:
    """The GridSpec attribute of an axis name."""
    return {
        "llm.system_prompt": "system_prompt",
        "training.noise_aware": "noise_aware",
        "training.epochs": "epochs",
    }.get(axis, axis)


class ReportSpec(_Model):
    """How `uhnas study report` compares groups."""

    paired: bool = True  # Wilcoxon signed-rank when both groups ran the same seeds; else Mann-Whitney U
    alpha: float = Field(default=0.05, gt=0, lt=1)


class StudySpec(_Model):
    """A validated study file (see the module docstring)."""

    name: str | None = None
    description: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: GridSpec = Field(default_factory=GridSpec)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    report: ReportSpec = Field(default_factory=ReportSpec)

    def base_config(self) -> RunConfig:
        """The base run configuration (validated when the study is loaded)."""
        return RunConfig.model_validate(self.base)


def _error_line(source: str, error: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    errors = error.errors(include_url=False)

    def key_path(e: Any) -> tuple[Any, ...]:
        return tuple(part for part in e["loc"] if not _is_union_tag(part))

    # a union (a backend as a name or a mapping) fails once per member: report the member that got deepest
    head = key_path(errors[0])
    alternatives = [e for e in errors if key_path(e)[: len(head)] == head]
    first = max(alternatives, key=lambda e: len(key_path(e)))
    others = len(errors) - len(alternatives)
    more = f" (+{others} more)" if others else ""
    loc = key_path(first)
    return f"{source}: {_location(prefix + loc)}: {_message(first)}{more}"


def _is_union_tag(part: Any) -> bool:
    """Pydantic names the union member it tried (e.g. 'BackendEntry', 'str') in error locations: not a key."""
    return isinstance(part, str) and (part in ("str", "int", "list[int]", "BackendEntry") or part.startswith("list["))


def study_from_dict(data: Any, source: str = "study", root: Path | None = None) -> StudySpec:
    """Validate a decoded study mapping; ConfigError naming `source` and the first bad key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study must be a mapping of keys to values, got {type(data).__name__}")
    data = dict(data)
    if isinstance(data.get("base"), str):  # the path of a run config, relative to the study file
        path = Path(data["base"])
        data["base"] = read_yaml(path if path.is_absolute() or root is None else root / path)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_error_line(source, error)) from None
    try:
        RunConfig.model_validate(spec.base)
    except ValidationError as error:
        raise ConfigError(_error_line(source, error, ("base",))) from None
    axes = spec.grid.axes()
    for index, rule in enumerate(spec.exclude):
        for key in rule:
            if key not in AXES:
                raise ConfigError(f"{source}: exclude.{index}.{key}: unknown axis (one of {', '.join(AXES)})")
            if key not in axes:
                raise ConfigError(f"{source}: exclude.{index}.{key}: the grid does not vary this axis")
    return spec


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[StudySpec, dict[str, Any]]:
    """Read and validate a study file with `key.path=value` overrides; returns the spec and the resolved document.

    An override sets a base config key (``training.epochs=1``, ``data_dir=../shared/data``) or, prefixed with
    ``grid.``, an axis (``grid.seed=[0, 1]``, ``grid.llm.system_prompt=[generic]``); ``base.``, ``name=``,
    ``exclude=`` and ``report.`` keys address the study file itself.
    """
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data.get("base"), str):
        base = Path(data["base"])
        data["base"] = read_yaml(base if base.is_absolute() else path.parent / base)
    source = str(path)
    if overrides:
        data = apply_study_overrides(data, overrides)
        source += " (with overrides)"
    return study_from_dict(data, source, path.parent), data


def apply_study_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of a study document with each override applied (see `load_study`)."""
    result = dict(data)
    base_overrides: list[str] = []
    for text in overrides:
        key, _, raw = text.partition("=")
        key = key.strip()
        if key.startswith("grid."):
            _, value = parse_override(f"x={raw}")
            result["grid"] = {**(result.get("grid") or {}), key[len("grid.") :]: value}
        elif key.startswith("base."):
            base_overrides.append(text.strip()[len("base.") :])
        elif key in ("name", "description", "exclude") or key.startswith("report."):
            result = apply_overrides(result, [text])
        else:
            base_overrides.append(text)
    if base_overrides:
        result["base"] = apply_overrides(dict(result.get("base") or {}), base_overrides)
    return result


def dump_study(data: dict[str, Any], path: str | Path) -> None:
    """Write a resolved study document as YAML."""
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


__all__ = [
    "AXES",
    "BackendEntry",
    "GridSpec",
    "ReportSpec",
    "StudySpec",
    "apply_study_overrides",
    "dump_study",
    "load_study",
    "study_from_dict",
]
