"""Validation of the model's answers: the `propose()` callbacks of the LLM prompt families.

An architecture answer is checked in order

1. structure — top-level keys, layer types and layer fields (model-written keys are quoted in the error),
2. schema — the pydantic IR (`parse_architecture`),
3. shapes — `analyze()` for the dataset's input shape and class count,
4. hardware — `backend.check()` constraint violations, stating limit and actual,
5. novelty — `context.is_known(hash)`: "duplicate of an already evaluated architecture; propose a different one",

and each verdict (malformed / schema / shape / constraint / duplicate / valid) is remembered for the call log.
The layer vocabulary is read from the IR's layer classes, never copied. Validation is deterministic for a given
answer, so a replayed run rebuilds the same repair conversation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from uhnas.arch import LAYER_TYPES, ArchitectureError, analyze, arch_hash, parse_architecture
from uhnas.arch.model import (
    MAX_NAME,
    MAX_TEXT,
    Activation,
    AvgPool,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool,
)
from uhnas.hardware.card import Violation
from uhnas.llm.errors import one_line
from uhnas.llm.prompting import quote
from uhnas.llm.propose import ERROR_CHARS, Attempt
from uhnas.search.operators.base import OperatorContext
from uhnas.search.operators.llm_summary import Checker

__all__ = ["DUPLICATE", "VERDICTS", "ArchValidator", "heuristics_errors", "normalise"]

VERDICTS = ("valid", "malformed", "schema", "shape", "constraint", "duplicate")
DUPLICATE = "duplicate of an already evaluated architecture; propose a different one"
TOP_LEVEL_KEYS = ("name", "rationale", "layers")
MAX_STRUCTURE_ERRORS = 5
_LAYER_FIELDS: dict[str, tuple[str, ...]] = {
    cls.model_fields["type"].annotation.__args__[0]: tuple(cls.model_fields)  # type: ignore[union-attr]
    for cls in (Linear, Conv2d, MaxPool, AvgPool, Flatten, Activation, BatchNorm, Dropout)
}
assert set(_LAYER_FIELDS) == set(LAYER_TYPES), "layer vocabulary changed: update the LLM operator's structure check"


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """The answer with over-long name / rationale truncated (not worth a repair turn); deterministic."""
    out = dict(data)
    if isinstance(out.get("name"), str) and len(out["name"]) > MAX_NAME:
        out["name"] = out["name"][:MAX_NAME]
    if isinstance(out.get("rationale"), str) and len(out["rationale"]) > MAX_TEXT:
        out["rationale"] = out["rationale"][:MAX_TEXT]
    return out


def _structure_errors(data: Mapping[str, Any]) -> list[str]:
    """Unknown keys and layer types, named with the model's own text quoted (it never reaches a prompt raw)."""
    errors = [f"unknown key {quote(k, 40)} at the top level (allowed: {', '.join(TOP_LEVEL_KEYS)})"
              for k in data if k not in TOP_LEVEL_KEYS]  # fmt: skip
    layers = data.get("layers")
    if not isinstance(layers, list):
        errors.append('"layers" must be a list of layer objects')
        return errors[:MAX_STRUCTURE_ERRORS]
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            errors.append(f'layer {i}: must be a JSON object with a "type"')
            continue
        kind = layer.get("type")
        if not isinstance(kind, str) or kind not in _LAYER_FIELDS:
            errors.append(f"layer {i}: unknown layer type {quote(kind, 40)}; expected one of {', '.join(LAYER_TYPES)}")
            continue
        allowed = _LAYER_FIELDS[kind]
        errors += [f"layer {i} ({kind}): unknown field {quote(k, 40)} (allowed: {', '.join(allowed)})"
                   for k in layer if k not in allowed]  # fmt: skip
    return errors[:MAX_STRUCTURE_ERRORS]


def _violation_error(v: Violation) -> str:
    """A backend constraint violation as a repair instruction stating limit and actual."""
    return (
        f"violates the hardware limit {v.constraint}: {v.actual:,.6g} {v.unit} > limit {v.limit:,.6g} {v.unit} "
        "(a candidate over a physical limit is infeasible); make the network smaller where it counts"
    )


class ArchValidator:
    """The propose() callback for one architecture answer; remembers each verdict for the call log."""

    def __init__(self, context: OperatorContext, check: Checker) -> None:
        self.context = context
        self.check = check
        self.verdicts: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, data: dict[str, Any]) -> list[str]:
        verdict, errors = self.judge(data)
        self.verdicts.append((verdict, tuple(errors)))
        return errors

    def judge(self, data: Mapping[str, Any]) -> tuple[str, list[str]]:
        """(verdict, one-line errors) of one decoded answer."""
        data = normalise(data)
        errors = _structure_errors(data)
        if errors:
            return "schema", [one_line(e, ERROR_CHARS) for e in errors]
        try:
            arch = parse_architecture(data)
        except ArchitectureError as exc:
            return "schema", [one_line(exc, ERROR_CHARS)]
        try:
            summary = analyze(arch, self.context.input_shape, self.context.num_classes)
        except ArchitectureError as exc:
            shape = "x".join(str(d) for d in self.context.input_shape)
            return "shape", [one_line(f"{exc} (input {shape}, {self.context.num_classes} classes)", ERROR_CHARS)]
        violations = list(self.check(summary))
        if violations:
            return "constraint", [one_line(_violation_error(v), ERROR_CHARS) for v in violations]
        if self.context.is_known(arch_hash(arch)):
            return "duplicate", [DUPLICATE]
        return "valid", []

    def classify(self, attempts: Sequence[Attempt]) -> list[str]:
        """The verdict of every attempt, in order. The validator ran once for each attempt whose answer held a
        JSON object; an attempt it did not run for had none: malformed."""
        out: list[str] = []
        verdicts = iter(self.verdicts)
        upcoming = next(verdicts, None)
        for attempt in attempts:
            if upcoming is not None and _matches(attempt.errors, upcoming[1]):
                out.append(upcoming[0])
                upcoming = next(verdicts, None)
            else:
                out.append("malformed")
        return out


def _matches(logged: tuple[str, ...], judged: tuple[str, ...]) -> bool:
    """True when an attempt's logged errors are the validator's (propose may append the truncation note)."""
    if not judged:
        return not logged
    return logged[: len(judged)] == judged


def heuristics_errors(data: dict[str, Any]) -> list[str]:
    """Validation of a reflect answer: a list of strings under "heuristics"."""
    items = data.get("heuristics")
    if not isinstance(items, list):
        return ['answer must be {"heuristics": ["...", ...]}: a JSON object holding a list of strings']
    if not any(isinstance(i, str) and i.strip() for i in items):
        return ['"heuristics" holds no non-empty string']
    return []
