"""Validation of the model's answers: the `propose()` callbacks of the LLM prompt families.

An architecture answer is checked in order

1. structure — top-level keys, layer types and layer fields (model-written keys are quoted in the error),
2. schema — the pydantic IR (`parse_architecture`),
3. shapes — every shape error at once (`shape_report`: `analyze()` is run again after each problem with a
   stand-in fix, so one repair turn lists all of them, each with what to change),
4. hardware — `backend.check()` constraint violations, stating limit and actual,
5. novelty — `context.is_known(hash)`: "duplicate of an already evaluated architecture; propose a different one",

and each verdict (malformed / truncated / schema / shape / constraint / duplicate / valid / autofixed) is
remembered for the call log. With `autofix` on, an answer whose only problems are the two trivial shape errors —
a missing `flatten` before a linear layer on an image input, or a classifier that is missing or has the wrong
width — is accepted with those fixed, under the verdict "autofixed" (the fixes are recorded), so the model's raw
ability stays measurable. The layer vocabulary is read from the IR's layer classes, never copied. Validation is
deterministic for a given answer, so a replayed run rebuilds the same repair conversation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uhnas.arch import LAYER_TYPES, Architecture, ArchitectureError, analyze, arch_hash, parse_architecture
from uhnas.arch.canonical import structural_distance
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
from uhnas.llm.knowledge import placeholder
from uhnas.llm.prompting import compact_layers, quote
from uhnas.llm.propose import ERROR_CHARS, Attempt
from uhnas.records import TrialRecord
from uhnas.search.operators.base import OperatorContext
from uhnas.search.operators.llm_summary import Checker

__all__ = [
    "ACCEPTED",
    "DUPLICATE",
    "VERDICTS",
    "ArchValidator",
    "ShapeReport",
    "echoed",
    "heuristics_errors",
    "normalise",
    "real_heuristics",
    "shape_report",
]

VERDICTS = ("valid", "autofixed", "malformed", "truncated", "schema", "shape", "constraint", "duplicate")
ACCEPTED = ("valid", "autofixed")  # verdicts of an answer that became a proposal
MAX_SHAPE_ERRORS = 8
_AT_LAYER = re.compile(r"^layer (\d+) \((\w+)\)(.*)$")
DUPLICATE = "duplicate of an already evaluated architecture; propose a different one"
DUPLICATE_HINT = (
    "change at least one layer of it (a width, a channel count, an activation, or add or remove a layer) so that "
    "it is a new network"
)
TOP_LEVEL_KEYS = ("name", "rationale", "layers")
MAX_STRUCTURE_ERRORS = 5
PARENT_COPY = "parent-copy"  # refusal reason of an answer that repeated a parent unchanged
TAKEN_SHOWN = 3  # evaluated networks one edit from a duplicate answer, named in its repair turn
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


@dataclass
class ShapeReport:
    """Every shape problem of an architecture (original layer indices) and, when all of them are trivial, the
    layers with them fixed."""

    errors: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)  # what the trivial fixes did, in order
    fixed: list[dict[str, Any]] | None = None  # the layers with the trivial fixes applied (None: not all trivial)


def shape_report(arch: Architecture, input_shape: tuple[int, ...], num_classes: int) -> ShapeReport:
    """All shape errors of `arch` at once: `analyze()` names the first problem; a stand-in fix (insert the
    missing flatten, drop an impossible layer, fix the classifier) lets it find the next one. Errors name the
    layers by their index in the answer and say what to change."""
    layers: list[dict[str, Any]] = [layer.model_dump(mode="json") for layer in arch.layers]
    origin: list[int | None] = list(range(len(layers)))  # index in the answer; None = inserted by a fix
    report = ShapeReport()
    trivial = True
    shape = "x".join(str(d) for d in input_shape)
    if len(input_shape) == 3 and _early_flatten(layers, origin, report):
        trivial = False
    for _ in range(len(layers) + 4):
        try:
            analyze(Architecture(layers=layers), input_shape, num_classes)  # type: ignore[arg-type]
            break
        except ArchitectureError as exc:
            message = str(exc)
        except ValueError:  # a fix pushed the network past the IR's limits (e.g. too many layers)
            trivial = False
            break
        found = _AT_LAYER.match(message)
        if found is None:  # the output or a whole-network limit
            if message.startswith("output shape"):
                report.errors.append(message)
                report.fixes.append(_fix_classifier(layers, num_classes))
                continue
            report.errors.append(message)
            trivial = False
            break
        index, kind, rest = int(found.group(1)), found.group(2), found.group(3)
        where = f"layer {origin[index]} ({kind})" if origin[index] is not None else f"a layer ({kind})"
        if "insert a flatten layer" in rest:
            report.errors.append(f"{where}{rest} (the input is {shape}: flatten it before the first linear layer)")
            layers.insert(index, {"type": "flatten"})
            origin.insert(index, None)
            report.fixes.append(f"inserted a flatten layer before layer {origin[index + 1]}")
            continue
        if "input is flat" in rest:
            rest += "; conv2d and pooling layers must come before the flatten layer, not after it"
        elif "is larger than" in rest:
            rest += "; remove this layer (each pooling or stride-2 layer halves the image, so few of them fit)"
        report.errors.append(f"{where}{rest}")
        trivial = False
        del layers[index]
        del origin[index]
        if not layers:
            break
    report.errors = report.errors[:MAX_SHAPE_ERRORS]
    if trivial and report.errors:
        report.fixed = layers
    return report


_SPATIAL = ("conv2d", "maxpool", "avgpool")


def _early_flatten(layers: list[dict[str, Any]], origin: list[int | None], report: ShapeReport) -> bool:
    """A flatten put before conv2d / pooling layers (small models open a CNN with one): the error names that
    flatten, not each image layer after it, and says to remove it (a later flatten exists) or to move it after
    the last image layer; the stand-in fix does so, in place. False when the network has no such flatten (or a
    linear layer sits among those image layers, which the layer-by-layer errors describe better)."""
    kinds = [layer.get("type") for layer in layers]
    first = kinds.index("flatten") if "flatten" in kinds else None
    image_after = [] if first is None else [i for i in range(first + 1, len(kinds)) if kinds[i] in _SPATIAL]
    if first is None or not image_after or "linear" in kinds[first : image_after[-1]]:
        return False
    last = image_after[-1]
    named = ", ".join(f"{i} ({kinds[i]})" for i in image_after[:4]) + (", ..." if len(image_after) > 4 else "")
    later = next((i for i in range(last + 1, len(kinds)) if kinds[i] == "flatten"), None)
    what = f"remove it (layer {later} flattens after them)" if later is not None else (
        f"move it to just after layer {last}, the last of them")  # fmt: skip
    report.errors.append(f"layer {first} (flatten): it comes before the layers {named}, which need the image "
                         f"(conv2d and pooling work on C x H x W); {what}")  # fmt: skip
    if later is None:
        layers.insert(last + 1, {"type": "flatten"})
        origin.insert(last + 1, None)
    del layers[first]
    del origin[first]
    return True


def _fix_classifier(layers: list[dict[str, Any]], num_classes: int) -> str:
    """Make the network end with a linear layer of `num_classes` outputs (resize the last linear layer or append
    one, after a flatten when the output is still an image); say what was done."""
    last = layers[-1] if layers else {}
    if last.get("type") == "linear":
        old = last.get("out_features")
        layers[-1] = {**last, "out_features": num_classes}
        return f"resized the last linear layer from {old} to {num_classes} outputs"
    added = [{"type": "linear", "out_features": num_classes, "bias": True}]
    if any(layer.get("type") in ("conv2d", "maxpool", "avgpool") for layer in layers) and not any(
        layer.get("type") == "flatten" for layer in layers
    ):
        added.insert(0, {"type": "flatten"})
    layers.extend(added)
    return f"appended {'a flatten and ' if len(added) > 1 else ''}a linear layer with {num_classes} outputs"


class ArchValidator:
    """The propose() callback for one architecture answer; remembers each verdict for the call log."""

    def __init__(
        self,
        context: OperatorContext,
        check: Checker,
        *,
        autofix: bool = False,
        parents: tuple[int, ...] = (),
        arch_of: Callable[[TrialRecord], Architecture] | None = None,
    ) -> None:
        self.context = context
        self.arch_of = arch_of or (lambda record: parse_architecture(record.arch))
        self.check = check
        self.autofix = autofix
        self.parents = parents  # trial numbers of the parents (a repeated parent is named as such)
        self.verdicts: list[tuple[str, tuple[str, ...]]] = []
        self.fixed: dict[str, Any] | None = None  # the last answer with its trivial shape errors fixed
        self.fixes: list[str] = []
        self.last_layers: str | None = None  # compact layers of the last answer judged (for the refused list)
        self.copied_parent = False  # the last answer judged is one of the parents, unchanged

    def __call__(self, data: dict[str, Any]) -> list[str]:
        layers = data.get("layers") if isinstance(data, dict) else None
        self.last_layers = compact_layers(data) if isinstance(layers, list) and layers else None
        verdict, errors = self.judge(data)
        self.verdicts.append((verdict, tuple(errors)))
        return errors

    def judge(self, data: Mapping[str, Any]) -> tuple[str, list[str]]:
        """(verdict, one-line errors) of one decoded answer."""
        data = normalise(data)
        self.fixed, self.fixes, self.copied_parent = None, [], False
        errors = _structure_errors(data)
        if errors:
            return "schema", [one_line(e, ERROR_CHARS) for e in errors]
        try:
            arch = parse_architecture(data)
        except ArchitectureError as exc:
            return "schema", [one_line(exc, ERROR_CHARS)]
        report = shape_report(arch, self.context.input_shape, self.context.num_classes)
        if not report.errors:
            return self._novel(arch)
        errors = [one_line(e, ERROR_CHARS) for e in report.errors]
        if self.autofix and report.fixed is not None:
            fixed = {**data, "layers": report.fixed}
            try:
                verdict, more = self._novel(parse_architecture(fixed))
            except ArchitectureError as exc:
                verdict, more = "schema", [one_line(exc, ERROR_CHARS)]
            if verdict == "valid":
                self.fixed, self.fixes = fixed, report.fixes
                return "autofixed", []
            errors += [f"with those fixed: {e}" for e in more]
        return "shape", errors

    def _novel(self, arch: Architecture) -> tuple[str, list[str]]:
        """Constraint and duplicate checks of a well-shaped architecture."""
        summary = analyze(arch, self.context.input_shape, self.context.num_classes)
        violations = list(self.check(summary))
        if violations:
            return "constraint", [one_line(_violation_error(v), ERROR_CHARS) for v in violations]
        key = arch_hash(arch)
        if self.context.is_known(key):
            record = next((r for r in self.context.history if r.hash == key), None)  # None: proposed this generation
            self.copied_parent = record is not None and record.number in self.parents
            which = "a network already proposed in this generation" if record is None else (
                f"#{record.number}" + (" (a parent)" if self.copied_parent else ""))  # fmt: skip
            error = f"{DUPLICATE}: it is {which}; {DUPLICATE_HINT}"
            return "duplicate", [self._taken_near(arch, key, error)]
        return "valid", []

    def saturated(self) -> str | None:
        """Why to stop repairing: the last answer repeated a parent unchanged (a model that copied its input
        copies its own copy again in the repair turn: Qwen2.5-Coder 1.5B did so every time), or the last two
        answers were both duplicates, so the parents' neighbourhood is taken. A fresh attempt (other parents,
        the refused networks listed) costs less than another turn of this conversation and is likelier to land
        on a new network. None: repair as usual."""
        if self.verdicts and self.verdicts[-1][0] == "duplicate" and self.copied_parent:
            return "the answer repeated a parent unchanged"
        if len(self.verdicts) >= 2 and all(verdict == "duplicate" for verdict, _ in self.verdicts[-2:]):
            return "two duplicates in a row (the parents' neighbourhood is taken)"
        return None

    def refusal(self, verdict: str) -> str:
        """The one-word reason a refused answer is listed under in the slot's next attempt."""
        return PARENT_COPY if verdict == "duplicate" and self.copied_parent else verdict

    def _taken_near(self, arch: Architecture, key: str, error: str) -> str:
        """`error` followed by the evaluated networks one edit from a duplicate answer (nearest first, at most
        TAKEN_SHOWN, whole entries within ERROR_CHARS), so that the repair does not land on one of them next: a
        second duplicate costs a second repair call."""
        near: list[tuple[float, int, int, dict[str, Any]]] = []
        for order, record in enumerate(self.context.history):
            if record.arch is None or record.hash == key:
                continue
            distance = structural_distance(arch, self.arch_of(record))
            if distance <= 1.0:
                near.append((distance, order, record.number, record.arch))
        near.sort(key=lambda item: item[:2])
        text = error
        for index, (_, _, number, layers) in enumerate(near[:TAKEN_SHOWN]):
            entry = "; already evaluated one edit from it: " if index == 0 else ", "
            entry += f"#{number} ({compact_layers(layers)})"
            if len(text) + len(entry) > ERROR_CHARS:
                break
            text += entry
        return text

    def classify(self, attempts: Sequence[Attempt]) -> list[str]:
        """The verdict of every attempt, in order. The validator ran once for each attempt whose answer held a
        complete JSON object; an attempt it did not run for had none: truncated (cut off at the token limit) or
        malformed."""
        out: list[str] = []
        verdicts = iter(self.verdicts)
        upcoming = next(verdicts, None)
        for attempt in attempts:
            if upcoming is not None and _matches(attempt.errors, upcoming[1]):
                out.append(upcoming[0])
                upcoming = next(verdicts, None)
            else:
                out.append("truncated" if attempt.finish_reason == "length" else "malformed")
        return out


def _matches(logged: tuple[str, ...], judged: tuple[str, ...]) -> bool:
    """True when an attempt's logged errors are the validator's (propose may append the truncation note)."""
    if not judged:
        return not logged
    return logged[: len(judged)] == judged


def echoed(text: str, prompt: str) -> bool:
    """True when a heuristic only repeats words of the prompt's own text (a model copying its instructions)."""
    flat = " ".join(text.casefold().split()).strip(" .;,!")
    return bool(flat) and flat in " ".join(prompt.casefold().split())


def real_heuristics(items: Sequence[Any], prompt: str = "") -> list[str]:
    """The items of a reflect answer that are heuristics: strings, not placeholders, not echoes of `prompt`."""
    return [i for i in items if isinstance(i, str) and not placeholder(i) and not (prompt and echoed(i, prompt))]


def heuristics_errors(data: dict[str, Any], prompt: str = "") -> list[str]:
    """Validation of a reflect answer: a list of real heuristics under "heuristics" (the answer format's
    placeholder "...", other non-sentences and text copied from the prompt are refused, so they never become
    knowledge)."""
    items = data.get("heuristics")
    if not isinstance(items, list):
        return ['answer must be {"heuristics": ["...", ...]}: a JSON object holding a list of strings']
    if not real_heuristics(items, prompt):
        return ['"heuristics" holds no real heuristic: write each as one specific sentence of your own (at least '
                "4 words, not copied from this message)"]  # fmt: skip
    return []
