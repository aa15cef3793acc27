"""Grid expansion: a study's axes -> cells, each an ordinary run configuration with a stable, readable id.

A cell id lists the value of every axis the grid names, in `spec.AXES` order (e.g.
``digits_mzi-realistic_nsga2_s3``), so ids do not depend on the order of values in the file. A cell whose
configuration is invalid (say `llm.system_prompt` without an `llm:` section) is still a cell: it carries the
one-line error and the runner reports it as failed while the others run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhnas.config import RunConfig, apply_overrides, config_from_dict
from uhnas.errors import ConfigError
from uhnas.study.spec import AXES, BackendEntry, StudySpec

CELLS_DIR = "cells"
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass
class Cell:
    """One run of the study: its id, the axis values (labels) it stands for, and its run configuration."""

    index: int
    id: str
    axes: dict[str, Any]  # every axis in AXES -> this cell's value (backend as its label)
    config: RunConfig | None
    error: str | None = None  # why the configuration is invalid (config is then None)
    varied: tuple[str, ...] = field(default_factory=tuple)  # the axes the study's grid names

    def directory(self, root: str | Path) -> Path:
        """The cell's run directory inside the study directory."""
        return Path(root) / CELLS_DIR / self.id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the study manifest)."""
        return {
            "index": self.index,
            "id": self.id,
            "axes": self.axes,
            "config": self.config.to_dict() if self.config is not None else None,
            "error": self.error,
        }


def backend_label(value: str | BackendEntry) -> str:
    """The name a backend axis value goes by: its label, its preset (file stem for a YAML path), + overrides."""
    if isinstance(value, BackendEntry):
        if value.label:
            return value.label
        stem = _preset_name(value.preset)
        if not value.overrides:
            return stem
        digest = hashlib.sha1(json.dumps(value.overrides).encode()).hexdigest()[:6]
        return f"{stem}+{digest}"
    return _preset_name(value)


def _preset_name(preset: str) -> str:
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset


def _token(axis: str, value: Any) -> str:
    """The part of a cell id naming one axis value."""
    text = {
        "llm.system_prompt": f"prompt-{value}",
        "objective": f"obj-{value}",
        "training.noise_aware": "noise-aware" if value is True else "plain-train",
        "population": f"pop{value}",
        "generations": f"gen{value}",
        "offspring": f"off{value}",
        "training.epochs": f"ep{value}",
        "mc": f"mc{value}",
        "seed": f"s{value}",
    }.get(axis, str(value))
    return _UNSAFE.sub("-", text).strip("-") or "x"


def _overrides(axis: str, value: Any) -> list[str]:
    """Run-config overrides setting one axis value."""
    if axis == "backend":
        entry = value if isinstance(value, BackendEntry) else BackendEntry(preset=value)
        return [f"backend={json.dumps(entry.preset)}", f"backend_overrides={json.dumps(entry.overrides)}"]
    return [f"{AXES[axis]}={json.dumps(value)}"]


def _excluded(labels: dict[str, Any], rules: list[dict[str, Any]]) -> bool:
    for rule in rules:
        if all(labels.get(k) in (v if isinstance(v, list) else [v]) for k, v in rule.items()):
            return True
    return False


def _label(axis: str, value: Any) -> Any:
    return backend_label(value) if axis == "backend" else value


def _base_labels(config: RunConfig) -> dict[str, Any]:
    """Every axis's value in a run configuration (for axes the grid does not name)."""
    data = config.to_dict()
    labels: dict[str, Any] = {}
    for axis, path in AXES.items():
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        labels[axis] = node
    labels["backend"] = backend_label(BackendEntry(preset=config.backend, overrides=list(config.backend_overrides)))
    return labels


def expand(spec: StudySpec, name: str) -> list[Cell]:
    """The study's cells in grid order (axes in AXES order, values in file order), excluded ones left out.

    Storage: with a shared `storage:` URL in the base config, each cell gets the Optuna study name
    ``<study name>/<cell id>`` unless the base sets one (then ConfigError: cells would collide).
    """
    base = spec.base_config()
    base_data = base.to_dict()
    axes = spec.grid.axes()
    if base.storage and base.study_name and len(list(itertools.product(*axes.values()))) > 1:
        raise ConfigError(f"{name}: base.study_name: cells sharing one storage need distinct study names; remove it")
    cells: list[Cell] = []
    seen: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination))
        labels = {axis: _label(axis, value) for axis, value in chosen.items()}
        if _excluded(labels, spec.exclude):
            continue
        cell_id = "_".join(_token(axis, labels[axis]) for axis in axes) or "run"
        if cell_id in seen:
            raise ConfigError(f"{name}: grid: two cells get the id {cell_id!r} ({seen[cell_id]} and {labels})")
        seen[cell_id] = labels
        overrides = [text for axis, value in chosen.items() for text in _overrides(axis, value)]
        if base.storage:
            overrides.append(f"study_name={json.dumps(f'{name}/{cell_id}')}")
        config: RunConfig | None = None
        error: str | None = None
        try:
            config = config_from_dict(apply_overrides(base_data, overrides), f"{name}: cell {cell_id}")
        except ConfigError as failure:
            error = str(failure)
        all_labels = _base_labels(config or base) | labels
        cells.append(Cell(len(cells), cell_id, all_labels, config, error, tuple(axes)))
    if not cells:
        raise ConfigError(f"{name}: the grid has no cells (everything is excluded)")
    return cells


__all__ = ["CELLS_DIR", "Cell", "backend_label", "expand"]
