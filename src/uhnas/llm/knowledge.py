"""The bounded knowledge base of design heuristics that the reflect step rewrites every generation.

The model answers {"heuristics": [...]}; each heuristic is sanitised (control and format characters removed, one
line, leading list markers dropped), truncated to `max_chars`, deduplicated (case- and whitespace-insensitive) and
at most `max_items` are kept, in the model's order. The answer replaces the base: the reflect prompt asks the
model to rewrite the whole base. A malformed answer (no JSON object, no "heuristics" list, no usable string in
it) leaves the previous base untouched and is reported in the returned `KnowledgeUpdate`. Placeholders — the answer
format's own "...", text without letters, fewer than four words — are dropped like empty items, so a model that
copies the format never fills the base with them. The answer's schema bounds the list and each item
(`maxItems`, `maxLength`), so a grammar-constrained server must close the answer. The base round-trips through
JSON so the search can store it with each generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from uhnas.llm.errors import ParseError
from uhnas.llm.parse import extract_json
from uhnas.llm.prompting import sanitize

__all__ = ["KnowledgeBase", "KnowledgeUpdate", "placeholder"]

MIN_WORDS = 4  # a heuristic is a sentence: fewer words is a placeholder or a fragment
_WORD = re.compile(r"[^\W\d_]{2,}")  # a word: two or more letters
_MARKER = re.compile(r"^(?:[-*•]+|\d{1,3}[.)]|\(\d{1,3}\))\s+")  # "- ", "* ", "3. ", "(2) " list markers


@dataclass(frozen=True)
class KnowledgeUpdate:
    """Outcome of one update: whether the base changed, the error if the answer was malformed, what changed."""

    ok: bool
    error: str | None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    dropped: int = 0  # items of the answer not kept: duplicates, empty or non-string, over max_items

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the call log and reports)."""
        return {"ok": self.ok, "error": self.error, "added": list(self.added), "removed": list(self.removed),
                "dropped": self.dropped}  # fmt: skip


class KnowledgeBase:
    """At most `max_items` heuristics of at most `max_chars` characters each, rewritten by the reflect step."""

    def __init__(self, max_items: int = 12, max_chars: int = 240, items: Iterable[str] = ()) -> None:
        """An empty (or pre-filled, after sanitising) base with the given bounds."""
        if max_items < 1 or max_chars < 16:
            raise ValueError(f"need max_items >= 1 and max_chars >= 16 (got {max_items}, {max_chars})")
        self.max_items = max_items
        self.max_chars = max_chars
        self._items: list[str] = self._clean(list(items))[0]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"KnowledgeBase(max_items={self.max_items}, max_chars={self.max_chars}, items={self._items!r})"

    def to_list(self) -> list[str]:
        """The heuristics, most useful first (a copy)."""
        return list(self._items)

    def schema(self) -> dict[str, Any]:
        """JSON schema of the reflect answer, for structured output: bounded, so a grammar must close it."""
        item = {"type": "string", "minLength": 16, "maxLength": self.max_chars}
        return {
            "type": "object",
            "properties": {"heuristics": {"type": "array", "items": item, "minItems": 1, "maxItems": self.max_items}},
            "required": ["heuristics"],
            "additionalProperties": False,
        }

    def update_from_answer(self, text: str) -> KnowledgeUpdate:
        """Replace the base with the heuristics of a reflect answer; on a malformed answer keep it and say why."""
        try:
            data = extract_json(text)
        except ParseError as exc:
            return KnowledgeUpdate(ok=False, error=str(exc))
        heuristics = data.get("heuristics")
        if not isinstance(heuristics, list):
            keys = ", ".join(sorted(str(k) for k in data)) or "none"
            return KnowledgeUpdate(ok=False, error=f'answer has no "heuristics" list (keys: {keys})')
        return self.replace(heuristics)

    def replace(self, heuristics: list[Any]) -> KnowledgeUpdate:
        """Replace the base with `heuristics` (sanitised, deduplicated, bounded); keep it if none is usable."""
        cleaned, dropped = self._clean(heuristics)
        if not cleaned:
            return KnowledgeUpdate(ok=False, error="no usable heuristic in the answer (empty or not strings)",
                                   dropped=dropped)  # fmt: skip
        old = {_key(h) for h in self._items}
        new = {_key(h) for h in cleaned}
        update = KnowledgeUpdate(
            ok=True, error=None, added=tuple(h for h in cleaned if _key(h) not in old),
            removed=tuple(h for h in self._items if _key(h) not in new), dropped=dropped,
        )  # fmt: skip
        self._items = cleaned
        return update

    def _clean(self, heuristics: list[Any]) -> tuple[list[str], int]:
        """Sanitised, deduplicated, bounded heuristics and how many items were dropped."""
        kept: list[str] = []
        seen: set[str] = set()
        for item in heuristics:
            if not isinstance(item, str) or len(kept) >= self.max_items:
                continue
            text = _MARKER.sub("", sanitize(item, 10 * self.max_chars)).strip()
            text = sanitize(text, self.max_chars)
            if text and not placeholder(text) and _key(text) not in seen:
                seen.add(_key(text))
                kept.append(text)
        return kept, len(heuristics) - len(kept)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: bounds and heuristics."""
        return {"max_items": self.max_items, "max_chars": self.max_chars, "heuristics": list(self._items)}

    def to_json(self) -> str:
        """The base as a JSON string, for storage with a generation."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KnowledgeBase:
        """Rebuild a base stored with to_dict()."""
        return cls(int(data["max_items"]), int(data["max_chars"]), data.get("heuristics", []))

    @classmethod
    def from_json(cls, text: str) -> KnowledgeBase:
        """Rebuild a base stored with to_json()."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("stored knowledge base must be a JSON object")
        return cls.from_dict(data)


def placeholder(text: str) -> bool:
    """True for text that is no heuristic: the format's "...", no letters, or fewer than MIN_WORDS words."""
    return len(_WORD.findall(text)) < MIN_WORDS


def _key(text: str) -> str:
    """Dedup key: case- and whitespace-insensitive, trailing punctuation ignored."""
    return " ".join(text.casefold().split()).rstrip(" .;!")
