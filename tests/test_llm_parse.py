"""extract_json: the JSON object in a model answer, or a one-line ParseError."""

from __future__ import annotations

import pytest

from uhnas.llm.errors import ParseError
from uhnas.llm.parse import extract_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"layers": [{"type": "dense", "units": 32}]}', {"layers": [{"type": "dense", "units": 32}]}),
        ('  \n{"a": 1}\n ', {"a": 1}),
        ('Here you go:\n```json\n{"a": {"b": 2}}\n```\nHope it helps.', {"a": {"b": 2}}),
        ('```\n{"a": 3}\n```', {"a": 3}),
        ('```python\nx = {1: 2}\n```\n```json\n{"a": 4}\n```', {"a": 4}),  # json-labelled fence wins
        ('I propose {"a": 5, "why": "wider"} as the child.', {"a": 5, "why": "wider"}),
        ('{"note": "braces } and { inside", "q": "say \\"}\\""}', {"note": "braces } and { inside", "q": 'say "}"'}),
        ('Set {width} first. Then: {"a": 6, "s": "{not a brace}"} done', {"a": 6, "s": "{not a brace}"}),
        ('<think>maybe {"a": 0}?</think>\nFinal: {"a": 7}', {"a": 7}),
        ('```json\n{"a": 8}', {"a": 8}),  # unclosed fence (answer truncated after the object)
        ('{"a": "line one\nline two"}', {"a": "line one\nline two"}),  # raw newline inside a string
    ],
)
def test_extracts_object(text: str, expected: dict) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no json here at all", "no JSON object found in answer"),
        ("", "empty answer"),
        ('[{"a": 1}]', "answer is JSON but not an object (got array)"),
        ('{"a": 1', "no complete JSON object found (unbalanced braces"),
        ('Result:\n{"a": 1,,}', "invalid JSON at line 2 col 9: Expecting property name"),
        ("```json\n{'a': 1}\n```", "invalid JSON at line 2 col 2"),
    ],
)
def test_garbage_raises_one_line_parse_error(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        extract_json(text)
    assert str(info.value).startswith(reason) and "\n" not in str(info.value)


def test_parse_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        extract_json("nothing")


def test_pathological_input_is_bounded() -> None:
    with pytest.raises(ParseError):
        extract_json("{" * 20000)
