"""Render the LLM operators' prompts from Jinja2 templates, with untrusted text quoted as data.

The templates live in ``uhnas/llm/prompts/*.j2``; this module only supplies the environment (StrictUndefined:
a missing context key is an error, never an empty string), the formatting filters, and the check that a context
carries the keys its prompt kind needs.

Context contract (what the operator layer passes; every key listed for a kind is required)::

    task        {dataset: str, input_shape: [int, ...], num_classes: int, epochs: int}
    objective   "mean" | "clean" | "p5": which accuracy the error objective uses (other strings are shown as is)
    backend     the backend card: {name, family, precision, description, models: [str],
                                   constants: {name: {value, unit, source}}}
    energy_components_hint   optional str: which energy components dominate on this backend and why
    limits      {max_layers: int, max_width: int, ...}: architecture limits; any key, scalar or {value, unit}
    schema      the architecture JSON schema the answer must match, rendered as a layer vocabulary (every kind
                that asks for architectures: all but reflect); always the IR's own
                `uhnas.arch.architecture_schema()`, so every layer type and activation the IR accepts is offered
    front       [candidate summary]: the feasible Pareto front (shown in the given order, at most SHOWN["front"])
    recent      [candidate summary]: the latest candidates, newest last (at most SHOWN["recent"])
    target      optional str | None (init, mutate, crossover): the niche this proposal should aim at, written by
                code (e.g. "energy 0.8-2.4 nJ, where the front has no network: about 3x less than the parent")
    knowledge   [str]: the knowledge base's heuristics (model-written: rendered as quoted data)
    generation, generations   int: current generation (0 = initial population) and the budget
    parent      candidate summary (mutate, llmatic_mutate)
    parents     [candidate summary, candidate summary] (crossover)
    count       int (init): architectures wanted from this call; 1 asks for one architecture object,
                more asks for {"architectures": [...]} (use propose_many)
    knowledge_max_items, knowledge_max_chars   int (reflect): the knowledge base's bounds
    instruction int (llmatic_mutate): index into llmatic_instructions(), chosen by the caller's generator
    history     [candidate summary] (genius): the chain's own earlier proposals, oldest first
    rejected    optional [{layers: str, why: str}] (init, mutate, crossover): earlier proposals refused for this slot,
                by their compact layers and a code-written one-word reason (never error text: it could be copied
                back as data)

A candidate summary is::

    {trial: int, hash: str, layers: str (compact_layers of the architecture),
     layers_json: optional list of layer dicts (the IR's JSON; parents are shown in it: the answer's own form),
     error: float | None,
     clean_accuracy, noisy_accuracy, noisy_p5, robustness_drop (clean - noisy mean): float | None,
     energy_nj: float | None, energy_breakdown_nj: {component: nJ}, params: int | None, macs: int | None,
     violations: [{constraint, limit, actual, unit} | str], feasible: bool, rationale: str | None,
     name: str | None (optional), failure: str | None (optional: why evaluation failed),
     image: [C, H, W] | None (optional, parents: the image a CNN's layers leave before its flatten)}

Untrusted text (names, rationales, failure messages, heuristics: all written by earlier model calls) is stripped
of control and format characters, collapsed to one line, truncated to UNTRUSTED_CHARS and rendered as a JSON
string literal with <, > and & escaped: the model sees it as quoted data, never as instructions. LLM text is only
ever passed as template variables, never as template source, and the environment is sandboxed.
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from uhnas.llm.errors import LLMError, one_line

__all__ = [
    "KINDS",
    "REQUIRED_KEYS",
    "SHOWN",
    "SYSTEM_VARIANTS",
    "UNTRUSTED_CHARS",
    "PromptError",
    "answer_schema",
    "compact_layers",
    "describe_schema",
    "example_context",
    "llmatic_instructions",
    "quote",
    "render_messages",
    "render_repair",
    "sanitize",
]

UNTRUSTED_CHARS = 200  # model-written text is cut to this many characters before it enters a prompt
SHOWN = {"front": 6, "recent": 3, "history": 12, "knowledge": 8}  # list lengths a prompt shows at most
SYSTEM_VARIANTS: dict[str, str] = {
    "hardware-aware": "system_hardware_aware.j2",
    "generic": "system_generic.j2",
    "minimal": "system_minimal.j2",
}
_BASE = ("task", "objective", "limits")
_SEARCH = (*_BASE, "backend", "front", "recent", "knowledge", "generation", "generations")
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "init": (*_SEARCH, "schema", "count"),
    "mutate": (*_SEARCH, "schema", "parent"),
    "crossover": (*_SEARCH, "schema", "parents"),
    "reflect": (*_SEARCH, "knowledge_max_items", "knowledge_max_chars"),
    "llmatic_mutate": (*_BASE, "schema", "parent", "instruction"),
    "genius": (*_BASE, "schema", "history"),
}
KINDS: tuple[str, ...] = tuple(REQUIRED_KEYS)
_DEFAULT_VARIANT = {"llmatic_mutate": "generic", "genius": "generic"}  # baselines get no hardware context
_SYSTEM_KEYS = {"hardware-aware": ("backend", "objective"), "generic": ("objective",), "minimal": ()}
_OBJECTIVES = {
    "mean": "error = 1 - mean accuracy over Monte-Carlo draws of the hardware's non-idealities",
    "clean": "error = 1 - accuracy of the ideal (noise-free) network",
    "p5": "error = 1 - 5th-percentile accuracy over Monte-Carlo draws of the non-idealities (robust worst case)",
}
_IDENT = re.compile(r"[^A-Za-z0-9_.+-]")
_LAYERS_TEXT = re.compile(r"[^A-Za-z0-9_. |:+-]")


class PromptError(LLMError, ValueError):
    """A prompt cannot be rendered: unknown kind or variant, or a context key the template needs is missing.

    An LLMError, so a template bug stops a search (like a spent budget) instead of failing slot after slot.
    """


# --- sanitising untrusted text -------------------------------------------------------------------------------
def sanitize(text: Any, limit: int = UNTRUSTED_CHARS) -> str:
    """Model-written text made inert: control/format characters removed, one line, at most `limit` characters."""
    raw = unicodedata.normalize("NFC", str(text))
    kept = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in raw)
    flat = " ".join(kept.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def quote(text: Any, limit: int = UNTRUSTED_CHARS) -> str:
    """Untrusted text as a JSON string literal (sanitised, truncated, <>& escaped); None becomes null."""
    if text is None:
        return "null"
    literal = json.dumps(sanitize(text, limit), ensure_ascii=False)
    return literal.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _ident(value: Any, limit: int = 40) -> str:
    """A token for names that code produced (component, constraint, hash): only [A-Za-z0-9_.+-] survive."""
    return _IDENT.sub("", str(value))[:limit] or "?"


def _layers_text(value: Any) -> str:
    """Compact layer text restricted to the characters compact_layers produces."""
    return _LAYERS_TEXT.sub("", str(value))[:1000]


def _layers_json(layers: Any) -> str:
    """Layers as the JSON object an answer must be ({"layers": [...]}): numbers, booleans, null and identifiers
    only (the layers come from the validated IR; anything else is dropped)."""
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        return '{"layers": []}'
    clean = []
    for layer in layers:
        if not isinstance(layer, Mapping):
            continue
        item: dict[str, Any] = {}
        for key, value in layer.items():
            if value is None or isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
                item[_ident(key, 20)] = value
            elif isinstance(value, str):
                item[_ident(key, 20)] = _ident(value, 20)
        clean.append(item)
    return json.dumps({"layers": clean})


def _constants(constants: Mapping[str, Any], limit: int = 350) -> str:
    """Backend constants in at most `limit` characters: the physical limits (max_*) first with their units, then
    the others as name=value (a unit only when it is short); the rest counted."""
    limits, others = [], []
    for name, c in constants.items():
        value = c["value"] if isinstance(c, Mapping) else c  # a missing key is a template error, never blank
        unit = sanitize(c["unit"], 40) if isinstance(c, Mapping) else ""
        shown = _ident(value) if isinstance(value, str) else _quantity(value)
        if str(name).startswith("max_"):
            limits.append(f"{_ident(name)} {shown} {unit}".strip())
        else:
            others.append(f"{_ident(name)}={shown}" + (f" {unit}" if unit and len(unit) <= 6 else ""))
    text = "limits: " + ("; ".join(limits) or "none") + ". Other: "
    shown_count = 0
    for part in others:
        if len(text) + len(part) + 2 > limit:
            break
        text += ("" if text.endswith(": ") else ", ") + part
        shown_count += 1
    return text + (f" ({len(others) - shown_count} more)" if shown_count < len(others) else "")


def _shape_rules(task: Mapping[str, Any]) -> str:
    """The shape rules of the task in plain words: the two network forms an image input allows (MLP, CNN), where
    flatten goes, how many halvings of the image fit, and the classifier."""
    shape = [int(d) for d in task["input_shape"]]
    classes = int(task["num_classes"])
    last = f'2. The last layer is {{"type": "linear", "out_features": {classes}, "bias": true}} ({classes} classes).'
    if len(shape) == 3:
        sizes = _halved_sides(min(shape[1], shape[2]))
        return (
            f"1. The input is an image of {_shape(shape)} (channels x height x width). A network is either an MLP: "
            "flatten first, then linear layers (activations between them); or a CNN: conv2d and pooling layers, "
            "then one flatten, then linear layers. So: exactly one flatten, every conv2d and pooling layer before "
            "it, every linear layer after it. Each pooling layer or stride-2 conv2d halves the image "
            f"({' -> '.join(f'{n}x{n}' for n in sizes)}): use at most {len(sizes) - 1} of them in all.\n{last}"
        )
    return f"1. The input is a flat vector of {shape[0]} features: use no flatten, conv2d or pooling.\n{last}"


def _halved_sides(side: int) -> list[int]:
    """An image side halved until 1: 8 -> [8, 4, 2, 1] (the sizes pooling or stride 2 can reach)."""
    sizes = [max(1, side)]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def _image_room(image: Sequence[int]) -> str:
    """What a CNN's conv/pool part leaves before its flatten, and how many more halvings fit (small models add a
    pooling layer to a 1x1 image unless told)."""
    side = min(int(image[-2]), int(image[-1]))
    room = len(_halved_sides(side)) - 1
    left = "no room for another pooling or stride-2 layer" if room == 0 else (
        f"room for {room} more halving{'s' if room > 1 else ''}")  # fmt: skip
    return f"its layers before flatten leave an image of {_shape(image)} ({left})"


def _example_networks(classes: int, image: bool) -> list[list[dict[str, Any]]]:
    """Two small valid networks (the IR's short form): an MLP and, for an image input, a CNN. The init prompt shows
    them; `example_context` builds its example population from them."""
    mlp: list[dict[str, Any]] = [{"type": "linear", "out_features": 32}, {"type": "activation", "function": "relu"},
                                 {"type": "linear", "out_features": classes}]  # fmt: skip
    if not image:
        return [mlp]
    cnn: list[dict[str, Any]] = [{"type": "conv2d", "out_channels": 8, "kernel": 3, "padding": 1},
                                 {"type": "activation", "function": "relu"}, {"type": "maxpool", "kernel": 2},
                                 {"type": "flatten"}, {"type": "linear", "out_features": classes}]  # fmt: skip
    return [[{"type": "flatten"}, *mlp], cnn]


def _examples(task: Mapping[str, Any]) -> list[str]:
    """The example networks for the task in the answer's JSON form (every field explicit)."""
    image = len(task["input_shape"]) == 3
    return [_layers_json(_full_layers(net)) for net in _example_networks(int(task["num_classes"]), image)]


# --- compact architecture text ---------------------------------------------------------------------------------
def compact_layers(arch: Mapping[str, Any] | Sequence[Any]) -> str:
    """One-line text of an architecture's layers, e.g. "flatten | linear 64 | relu | linear 10"."""
    layers = arch.get("layers", []) if isinstance(arch, Mapping) else arch
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        return "?"
    return " | ".join(_compact_layer(layer) for layer in layers)


def _compact_layer(layer: Any) -> str:
    """One layer: type, main size, then only the non-default options (k kernel, s stride, p padding)."""
    if not isinstance(layer, Mapping):
        return "?"
    kind = _ident(layer.get("type", "?"), 20)
    if kind == "activation":
        return _ident(layer.get("function", "?"), 20)
    parts = [kind]
    if kind == "linear":
        parts.append(_scalar(layer.get("out_features")))
    elif kind == "conv2d":
        parts += [_scalar(layer.get("out_channels")), "k" + _scalar(layer.get("kernel"))]
        if layer.get("stride", 1) not in (1, None):
            parts.append("s" + _scalar(layer["stride"]))
        if layer.get("padding", 0) not in (0, None):
            parts.append("p" + _scalar(layer["padding"]))
    elif kind in ("maxpool", "avgpool"):
        parts.append(_scalar(layer.get("kernel")))
        if layer.get("stride") not in (None, layer.get("kernel")):
            parts.append("s" + _scalar(layer["stride"]))
    elif kind == "dropout":
        parts.append(_scalar(layer.get("p", 0.5)))
    elif kind not in ("flatten", "batchnorm"):
        parts += [f"{_ident(k, 20)}={_scalar(v)}" for k, v in layer.items() if k != "type"]
    if layer.get("bias") is False:
        parts.append("nobias")
    return " ".join(parts)


def _scalar(value: Any) -> str:
    """A layer field as a short token: numbers and booleans as written, anything else reduced to an identifier."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:g}"
    return _ident(value, 24)


# --- formatting filters -----------------------------------------------------------------------------------------
def _num(value: Any, fmt: str = ".3f") -> str:
    """A metric for display; None or non-finite as n/a."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return format(value, fmt)


def _quantity(value: Any) -> str:
    """A measured amount: integral values with thousands separators, others to 4 significant digits."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return _scalar(value)


def _count(value: Any) -> str:
    """An integer count with thousands separators; None as n/a."""
    return "n/a" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{int(value):,}"


def _shape(shape: Sequence[int]) -> str:
    """An input shape as 1x8x8."""
    return "x".join(str(int(d)) for d in shape)


def _energy_shares(candidates: Sequence[Mapping[str, Any]]) -> str:
    """Share of each energy component summed over the candidates, largest first (components under 1 % grouped)."""
    sums: dict[str, float] = {}
    for cand in candidates:
        for key, value in (cand.get("energy_breakdown_nj") or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums[str(key)] = sums.get(str(key), 0.0) + float(value)
    total = sum(sums.values())
    if total <= 0:
        return "n/a"
    ranked = sorted(sums.items(), key=lambda kv: -kv[1])
    shown = [f"{_ident(k)} {v / total:.0%}" for k, v in ranked if v / total >= 0.01]
    rest = sum(v for _, v in ranked if v / total < 0.01)
    other = [f"other {rest / total:.0%}" if rest / total >= 0.005 else "other <1%"] if rest > 0 else []
    return ", ".join(shown + other)


def _violations(violations: Sequence[Any]) -> str:
    """Violated constraints as 'name: actual unit > limit unit'."""
    out = []
    for v in violations:
        if isinstance(v, Mapping):
            unit = sanitize(v.get("unit", ""), 40)
            out.append(f"{_ident(v.get('constraint'))}: {_quantity(v.get('actual'))} {unit} > limit "
                       f"{_quantity(v.get('limit'))} {unit}".replace("  ", " ").strip())  # fmt: skip
        else:
            out.append(sanitize(v, 200))
    return "; ".join(out) or "none"


def _limits(limits: Mapping[str, Any]) -> str:
    """Architecture limits as 'max_layers 32, max_width 2048, ...'."""
    parts = []
    for key, value in limits.items():
        if isinstance(value, Mapping):
            parts.append(f"{_ident(key)} {_quantity(value.get('value'))} {sanitize(value.get('unit', ''), 40)}".strip())
        else:
            parts.append(f"{_ident(key)} {_quantity(value)}")
    return ", ".join(parts)


def _task(task: Mapping[str, Any]) -> str:
    """The task in one line: dataset, input shape, classes, training epochs per candidate."""
    return (
        f"{sanitize(task['dataset'], 60)} (input {_shape(task['input_shape'])}, {int(task['num_classes'])} classes, "
        f"each candidate trained for {int(task['epochs'])} epochs)"
    )


def _objective(objective: str) -> str:
    """What the error objective measures."""
    return _OBJECTIVES.get(objective, sanitize(objective, 300))


def _by_drop(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Candidates with a known robustness drop, each trial once, largest drop first."""
    seen: set[Any] = set()
    known = []
    for cand in candidates:
        if isinstance(cand.get("robustness_drop"), (int, float)) and cand.get("trial") not in seen:
            seen.add(cand.get("trial"))
            known.append(cand)
    return sorted(known, key=lambda c: -float(c["robustness_drop"]))


def describe_schema(schema: Mapping[str, Any]) -> str:
    """A JSON schema as a compact vocabulary: each top-level key in the schema's order, and each variant of a list
    of tagged objects as the JSON object it must be, with value ranges ('{"type": "linear", "out_features":
    1..2048, "bias": true|false}')."""
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, Mapping):
        return json.dumps(schema, separators=(",", ":"), sort_keys=True)
    lines = []
    for name, node in props.items():
        variants = _tagged_variants(node)
        if variants is None:
            lines.append(f'- "{name}": {_type_text(node)}')
            continue
        lines.append(f'- "{name}": {_bounds(node, "list of")} layer objects, each one of:')
        lines_by_fields: dict[Any, tuple[str, list[str]]] = {}  # same fields, one line (maxpool | avgpool)
        for tag, variant in variants:
            fields = tuple(f'"{k}": {_value_text(v)}' for k, v in variant.get("properties", {}).items() if k != "type")
            text = "".join(", " + f for f in fields)
            lines_by_fields.setdefault(fields or tag, (text, []))[1].append(json.dumps(tag))  # a bare type: own line
        lines += [f'  {{"type": {" | ".join(tags)}{text}}}' for text, tags in lines_by_fields.values()]
    return "\n".join(lines)


def _value_text(node: Any) -> str:
    """A field's allowed values in JSON-like form: 1..2048, true|false, "relu" | "tanh", 2..4 or null."""
    if not isinstance(node, Mapping):
        return "any"
    if "anyOf" in node:
        return " or ".join(_value_text(n) for n in node["anyOf"])
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    kind = node.get("type")
    if kind in ("integer", "number") and node.get("minimum") is not None and node.get("maximum") is not None:
        return f"{node['minimum']:g}..{node['maximum']:g}"
    if kind == "boolean":
        return "true|false"
    return str(kind or "any")


def _tagged_variants(node: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]] | None:
    """For an array of objects discriminated by a one-value 'type' enum: (tag, object schema) pairs."""
    items = node.get("items") if node.get("type") == "array" else None
    options = items.get("anyOf") if isinstance(items, Mapping) else None
    if not isinstance(options, list):
        return None
    out = []
    for option in options:
        tag = option.get("properties", {}).get("type", {}).get("enum") if isinstance(option, Mapping) else None
        if not (isinstance(tag, list) and len(tag) == 1):
            return None
        out.append((str(tag[0]), option))
    return out


def _type_text(node: Any) -> str:
    """A schema node's type in words: 'integer 1..2048', 'one of relu, tanh', 'string (<= 80 chars) or null'."""
    if not isinstance(node, Mapping):
        return "any"
    if "anyOf" in node:
        return " or ".join(_type_text(n) for n in node["anyOf"])
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(v) for v in node["enum"])
    kind = node.get("type", "any")
    if kind in ("integer", "number"):
        lo, hi = node.get("minimum"), node.get("maximum")
        rng = f" {lo:g}..{hi:g}" if lo is not None and hi is not None else ""
        return f"{kind}{rng}"
    if kind == "string" and "maxLength" in node:
        return f"string (<= {node['maxLength']} chars)"
    if kind == "array":
        return f"{_bounds(node, 'list of')} {_type_text(node.get('items'))}"
    return str(kind)


def _bounds(node: Mapping[str, Any], noun: str) -> str:
    """'list of (1..32)' style prefix with the item-count bounds when given."""
    lo, hi = node.get("minItems"), node.get("maxItems")
    return f"{noun} ({lo}..{hi})" if lo is not None and hi is not None else noun


# --- the answer's schema ----------------------------------------------------------------------------------------
ANSWER_NAME_CHARS = 40
ANSWER_RATIONALE_CHARS = 300
_FLATTEN_RULE = (
    "Flattens C x H x W to a vector. With an image input, exactly one flatten goes after the last conv2d or pooling "
    "layer and before the first linear layer (an MLP starts with it)."
)


def answer_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture schema as the model answers it: "layers" first (a grammar-constrained model writes the
    layers before it can spend its tokens on prose), "name" and "rationale" required but short (<= 40 and <= 300
    characters), and the flatten rule stated correctly for image and flat inputs. Every answer it admits is
    admitted by `schema` (the IR's)."""
    out = json.loads(json.dumps(schema))
    props = out.get("properties")
    if out.get("type") != "object" or not isinstance(props, dict) or "layers" not in props:
        return out
    layers = props["layers"]
    for _, variant in _tagged_variants(layers) or []:
        if variant.get("properties", {}).get("type", {}).get("enum") == ["flatten"]:
            variant["description"] = _FLATTEN_RULE
    ordered = {"layers": layers}
    if "name" in props:
        ordered["name"] = {"type": "string", "maxLength": ANSWER_NAME_CHARS}
    if "rationale" in props:
        ordered["rationale"] = {"type": "string", "maxLength": ANSWER_RATIONALE_CHARS}
    ordered.update({k: v for k, v in props.items() if k not in ordered})
    out["properties"] = ordered
    out["required"] = list(ordered)
    return out


# --- environment and rendering ----------------------------------------------------------------------------------
def _strict(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that fails on an undefined argument (StrictUndefined alone lets filters see it silently)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, jinja2.Undefined):
                arg._fail_with_undefined_error()
        return fn(*args, **kwargs)

    return wrapper


def _environment() -> jinja2.Environment:
    """The sandboxed, StrictUndefined environment over the package's prompts directory, with the filters."""
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.PackageLoader("uhnas.llm", "prompts"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text prompts; untrusted text goes through |q instead
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters: dict[str, Callable[..., Any]] = dict(
        q=quote, num=_num, count=_count, shape=_shape, energy_shares=_energy_shares,
        violations=_violations, limits=_limits, task=_task, objective=_objective, by_drop=_by_drop,
        vocabulary=describe_schema, ident=_ident, layers=_layers_text, line=one_line, layers_json=_layers_json,
        constants=_constants, shape_rules=_shape_rules, image_room=_image_room, examples=_examples,
    )  # fmt: skip
    env.filters.update({name: _strict(fn) for name, fn in filters.items()})
    env.globals["shown"] = dict(SHOWN)
    return env


_ENV = _environment()


def _render(template: str, context: Mapping[str, Any]) -> str:
    """Render one template; undefined values become a PromptError naming the template."""
    try:
        text = _ENV.get_template(template).render(**context)
    except jinja2.UndefinedError as exc:
        raise PromptError(f"{template}: {exc.message}") from None
    except KeyError as exc:  # a filter indexed a context dict that lacks the key
        raise PromptError(f"{template}: context is missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{template}: bad context value: {one_line(exc)}") from None
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def render_messages(
    kind: str, context: Mapping[str, Any], *, system_variant: str | None = None
) -> list[dict[str, str]]:
    """System and user messages for one prompt kind; system_variant None = hardware-aware (generic for baselines)."""
    if kind not in REQUIRED_KEYS:
        raise PromptError(f"unknown prompt kind '{kind}' (expected one of {', '.join(KINDS)})")
    variant = system_variant or _DEFAULT_VARIANT.get(kind, "hardware-aware")
    if variant not in SYSTEM_VARIANTS:
        raise PromptError(f"unknown system prompt variant '{variant}' (expected one of {', '.join(SYSTEM_VARIANTS)})")
    needed = dict.fromkeys((*REQUIRED_KEYS[kind], *_SYSTEM_KEYS[variant]))
    missing = [key for key in needed if key not in context]
    if missing:
        raise PromptError(f"{kind} prompt needs context key(s): {', '.join(missing)}")
    return [
        {"role": "system", "content": _render(SYSTEM_VARIANTS[variant], context)},
        {"role": "user", "content": _render(f"{kind}.j2", context)},
    ]


def render_repair(
    errors: Sequence[str], *, attempt: int, max_attempts: int, count: int | None = None, layers: Any = None
) -> str:
    """The user message asking to correct the previous answer, quoting its exact errors (count: a batch answer).
    With the answer's `layers`, errors that name a layer also get the layers listed by number with those marked:
    a small model told "layer 6" otherwise tends to send the same network back."""
    return _render("repair.j2", {"errors": list(errors), "attempt": attempt, "max_attempts": max_attempts,
                                 "count": count, "numbered": _numbered_layers(layers, errors)})  # fmt: skip


_LAYER_ERROR = re.compile(r"^layer (\d+) \(")


def _numbered_layers(layers: Any, errors: Sequence[str]) -> list[str]:
    """An answer's layers one per line, "6 maxpool 2 <- problem" where an error names the layer; [] when no
    error names a layer of the list (a schema error, a duplicate, a batch answer)."""
    marked = {int(m.group(1)) for e in errors if (m := _LAYER_ERROR.match(e))}
    if not marked or not isinstance(layers, list) or not marked <= set(range(len(layers))):
        return []
    return [f"{i} {_compact_layer(layer)}" + (" <- problem" if i in marked else "") for i, layer in enumerate(layers)]


def llmatic_instructions() -> list[str]:
    """The fixed LLMatic-style mutation instructions (data in llmatic_instructions.j2); index with `instruction`."""
    module = _ENV.get_template("llmatic_instructions.j2").module
    return [str(item) for item in module.instructions]  # type: ignore[attr-defined]


# --- example context (the schema is passed in: see example_context) ---------------------------------------------
def _example_candidate(trial: int, layers: list[Any], clean: float, noisy: float, p5: float,
                       breakdown: dict[str, float], params: int, macs: int, rationale: str,
                       violations: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """One realistic candidate summary for example_context()."""
    return {
        "trial": trial, "hash": f"{trial * 2654435761 % 2**32:08x}", "layers": compact_layers({"layers": layers}),
        "error": round(1 - noisy, 4), "clean_accuracy": clean, "noisy_accuracy": noisy, "noisy_p5": p5,
        "robustness_drop": round(clean - noisy, 4), "energy_nj": round(sum(breakdown.values()), 4),
        "energy_breakdown_nj": breakdown, "params": params, "macs": macs, "violations": violations or [],
        "feasible": not violations, "rationale": rationale, "layers_json": _full_layers(layers),
    }  # fmt: skip


def _full_layers(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Example layers with every field explicit, as the IR stores them (bias true, stride 1, padding 0)."""
    defaults = {"linear": {"bias": True}, "conv2d": {"stride": 1, "padding": 0, "bias": True},
                "maxpool": {"stride": None}, "avgpool": {"stride": None}}  # fmt: skip
    return [{**layer, **{k: v for k, v in defaults.get(layer["type"], {}).items() if k not in layer}}
            for layer in layers]  # fmt: skip


def example_context(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A realistic context (MZI backend on digits) for tests and `uhnas prompts render`.

    `schema` is the IR's `uhnas.arch.architecture_schema()`: this module keeps no copy of the layer vocabulary
    (a copy drifts), and it does not import uhnas.arch itself (the prompt layer knows nothing of the IR's code).
    """
    mlp, cnn = _example_networks(10, image=True)
    onn = [{"type": "flatten"}, {"type": "linear", "out_features": 16, "bias": False},
           {"type": "activation", "function": "square"}, {"type": "linear", "out_features": 10}]  # fmt: skip
    wide = [{"type": "flatten"}, {"type": "linear", "out_features": 512}, {"type": "activation", "function": "relu"},
            {"type": "linear", "out_features": 10}]  # fmt: skip
    front = [
        _example_candidate(3, onn, 0.921, 0.903, 0.884, {"laser": 0.41, "dac": 0.19, "modulators": 0.03, "adc": 0.02,
                           "detectors": 0.05, "phase_holding": 0.01, "digital": 0.02, "memory": 0.01}, 1184, 1184,
                           "Photodetection as the nonlinearity: no extra ADC/DAC round trip between the two meshes."),
        _example_candidate(7, mlp, 0.962, 0.941, 0.925, {"laser": 1.32, "dac": 0.38, "modulators": 0.05, "adc": 0.06,
                           "detectors": 0.09, "phase_holding": 0.02, "digital": 0.03, "memory": 0.03}, 2410, 2368,
                           "One hidden layer of 32 ReLU units: enough capacity for 8x8 digits."),
        _example_candidate(11, cnn, 0.978, 0.952, 0.931, {"laser": 9.8, "dac": 2.9, "modulators": 0.4, "adc": 0.6,
                           "detectors": 0.7, "phase_holding": 0.02, "digital": 0.3, "memory": 0.5}, 5218, 9216,
                           "A single 3x3 conv block captures strokes; pooling halves the classifier size."),
    ]  # fmt: skip
    front[2]["image"] = [8, 4, 4]  # the CNN's conv and pooling leave 8x4x4 before its flatten
    recent = [
        front[2],
        _example_candidate(14, wide, 0.981, 0.902, 0.861, {"laser": 61.0, "dac": 4.1, "modulators": 0.9,
                           "adc": 2.3, "detectors": 2.6, "phase_holding": 0.6, "digital": 0.4, "memory": 1.9},
                           38410, 37888, "Wider hidden layer for accuracy.",
                           [{"constraint": "max_mzis", "limit": 32768, "actual": 36864, "unit": "MZIs"}]),
    ]  # fmt: skip
    backend = {
        "name": "mzi-realistic",
        "family": "mzi",
        "precision": "analog optical matrix products, 8-bit DAC/ADC at the mesh boundary",
        "description": "Coherent MZI-mesh accelerator (SVD mapping on 8x8 Clements meshes, weight-stationary, "
        "10 GHz) with typical non-idealities: phase noise, phase quantisation, thermal crosstalk, insertion loss, "
        "coupler error, DAC/ADC quantisation, shot and thermal detector noise.",
        "models": ["phase noise", "phase quantisation", "thermal crosstalk", "insertion loss", "coupler error",
                   "DAC/ADC quantisation", "detector shot and thermal noise", "energy: laser, dac, modulators, adc, "
                   "detectors, phase_holding, digital, memory"],
        "constants": {
            "mesh_size": {"value": 8, "unit": "ports (K x K mesh)", "source": "assumption"},
            "clock_ghz": {"value": 10.0, "unit": "GHz", "source": "SimPhony reference ADC"},
            "phase_noise_std": {"value": 0.02, "unit": "rad", "source": "ADEPT, DAC 2022"},
            "phase_bits": {"value": 8, "unit": "bits over 2 pi", "source": "L2ight, NeurIPS 2021"},
            "crosstalk": {"value": 0.005, "unit": "rad/rad (nearest neighbour)", "source": "L2ight"},
            "loss_db_per_mzi": {"value": 0.2, "unit": "dB per MZI", "source": "literature mid value"},
            "dac_energy_pj": {"value": 3.57, "unit": "pJ per conversion", "source": "SimPhony"},
            "adc_energy_pj": {"value": 1.48, "unit": "pJ per conversion", "source": "SimPhony"},
            "laser_wall_plug_efficiency": {"value": 0.2, "unit": "fraction", "source": "SimPhony"},
            "max_mzis": {"value": 32768, "unit": "MZIs", "source": "assumption: 512 tiles of 8x8"},
            "max_optical_power_mw": {"value": 10000.0, "unit": "mW optical", "source": "assumption"},
        },
    }  # fmt: skip
    return {
        "task": {"dataset": "digits", "input_shape": [1, 8, 8], "num_classes": 10, "epochs": 10},
        "objective": "mean",
        "backend": backend,
        "energy_components_hint": "The laser dominates: its power grows with the insertion loss of the mesh "
        "(2K+1 MZIs per path) and is paid every cycle a layer computes, so energy scales with matrix size times "
        "reuse (conv output pixels). DAC/ADC conversions at every layer boundary come next.",
        "limits": {
            "max_layers": 32,
            "max_width": 2048,
            "max_channels": 256,
            "max_kernel": 7,
            "max_params": 5_000_000,
            "max_macs": 200_000_000,
        },  # fmt: skip
        "schema": answer_schema(schema),
        "front": front,
        "recent": recent,
        "knowledge": [
            "Square (photodetection) activations cost no extra conversions and lost under 2 % accuracy to noise.",
            "Hidden widths above 64 multiply laser energy without a matching accuracy gain on digits.",
        ],
        "generation": 3,
        "generations": 10,
        "parent": front[1],
        "parents": [front[0], front[2]],
        "count": 4,
        "knowledge_max_items": 12,
        "knowledge_max_chars": 240,
        "instruction": 0,
        "history": [front[1], recent[1]],
        "rejected": [],
        "target": "energy 2.4-14 nJ, where the front has no network: about 3x the parent's energy, so make it larger "
        "(wider or one more layer)",
    }
