"""Extract the JSON object from a model answer: whole text, fenced block, or first balanced {...}.

Answers are data, never code: nothing here evaluates anything, it only locates and `json.loads` text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from uhnas.llm.errors import ParseError

__all__ = ["complete_object", "extract_json"]

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MAX_CANDIDATES = 64  # brace starts tried before giving up (bounds the work on pathological text)


def extract_json(text: str) -> dict[str, Any]:
    """Return the JSON object in `text`, or raise ParseError with a one-line reason."""
    if not isinstance(text, str):
        raise ParseError(f"expected the answer as text, got {type(text).__name__}")
    body = _THINK.sub("", text).strip()  # reasoning models put drafts (with braces) inside <think>
    if not body:
        raise ParseError("empty answer: no JSON object found")
    whole = _loads(body)
    if isinstance(whole, dict):
        return whole
    if whole is not None:
        raise ParseError(f"answer is JSON but not an object (got {_json_type(whole)})")
    first_error: str | None = None
    for offset, block in _fenced_blocks(body):
        found, error = _first_object(body, offset, offset + len(block))
        if found is not None:
            return found
        first_error = first_error or error
    found, error = _first_object(body, 0, len(body))
    if found is not None:
        return found
    raise ParseError(first_error or error or "no JSON object found in answer")


def complete_object(text: str) -> bool:
    """True when the whole answer (reasoning and one surrounding code fence removed) is one JSON object: what an
    answer cut off at the token limit is not, even when an inner object of it can be extracted."""
    if not isinstance(text, str):
        return False
    body = _THINK.sub("", text).strip()
    fenced = re.fullmatch(r"```[ \t]*[A-Za-z0-9_+-]*[^\n]*\n(.*?)\n?```", body, re.DOTALL)
    return isinstance(_loads(fenced.group(1) if fenced else body), dict)


def _loads(text: str) -> Any | None:
    """json.loads, or None when the text is not valid JSON (raw newlines in strings are tolerated)."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        return None


def _json_type(value: Any) -> str:
    """JSON name of a decoded value's type."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _fenced_blocks(text: str) -> list[tuple[int, str]]:
    """(offset, content) of ``` fenced blocks, json-labelled first (an unclosed last fence runs to the end)."""
    blocks = [(m.group(1).lower(), m.start(2), m.group(2)) for m in _FENCE.finditer(text)]
    labelled = [(o, c) for label, o, c in blocks if label == "json"]
    return labelled + [(o, c) for label, o, c in blocks if label != "json"]


def _first_object(text: str, lo: int, hi: int) -> tuple[dict[str, Any] | None, str | None]:
    """The first balanced {...} in text[lo:hi] that decodes to an object; else None and the first failure."""
    first_error: str | None = None
    start = text.find("{", lo, hi)
    tried = 0
    while start != -1 and tried < _MAX_CANDIDATES:
        tried += 1
        end = _matching_brace(text, start, hi)
        if end is None:
            first_error = first_error or "no complete JSON object found (unbalanced braces; answer truncated?)"
        else:
            candidate = text[start : end + 1]
            try:
                value = json.loads(candidate, strict=False)
            except json.JSONDecodeError as exc:
                first_error = first_error or _position_error(text, start + exc.pos, exc.msg)
            else:
                if isinstance(value, dict):
                    return value, None
        start = text.find("{", start + 1, hi)
    return None, first_error


def _matching_brace(text: str, start: int, hi: int) -> int | None:
    """Index (< hi) of the brace closing the one at `start`, skipping braces inside JSON strings."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, hi):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _position_error(text: str, pos: int, msg: str) -> str:
    """'invalid JSON at line L col C: msg' with the position counted in `text`."""
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"invalid JSON at line {line} col {col}: {msg}"
