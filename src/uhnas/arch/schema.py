"""The architecture's JSON schema, in a portable form that LLM servers accept for structured output.

pydantic's own schema uses oneOf with a discriminator, $ref/$defs and defaults; OpenAI's strict
json_schema mode, vLLM/xgrammar and llama.cpp grammars reject or ignore some of these. The portable
form inlines references, uses anyOf, lists every property as required and forbids extra keys,
keeping types, enums and numeric bounds.
"""

from __future__ import annotations

import copy
from typing import Any

from uhnas.arch.model import Architecture

_DROP_KEYS = {"title", "default", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every $ref by its definition and drop the keys servers reject."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _inline(copy.deepcopy(defs[name]), defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "oneOf":
            key = "anyOf"
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs)
    if out.get("type") == "object" and "properties" in out:
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    if "const" in out and "enum" not in out:
        out["enum"] = [out.pop("const")]
    return out


def architecture_schema() -> dict[str, Any]:
    """The portable JSON schema of an Architecture (strict-mode compatible)."""
    raw = Architecture.model_json_schema()
    schema = _inline(raw, raw.get("$defs", {}))
    schema["description"] = (
        "A feed-forward neural network as an ordered list of layers. The input shape and the number of "
        "classes come from the dataset; the last layer must output one value per class."
    )
    return schema
