"""What a run's language model did, from its call log (`<run dir>/llm.db`) and its trials' operators.

One dict for `uhnas status --json`, the search's `--json` summary, the live display and bench/: calls, prompt and
completion tokens, cost, seconds per call, the answers by verdict (valid, autofixed, malformed, truncated, schema,
shape, constraint, duplicate), and the LLM's share of the proposals and of the Pareto front (a slot filled by the
conventional fallback, "...(llm-fallback)", is not the LLM's).

Only calls that consumed an answer count: live calls and answers replayed from another run's log. Rows a resumed
run re-derived from its own cache ("cache") were counted when they were made.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["FALLBACK_SUFFIX", "LLM_OPERATORS", "llm_accounting", "llm_made"]

FALLBACK_SUFFIX = "(llm-fallback)"
LLM_OPERATORS = ("llm", "llmatic", "genius")  # operator-name prefixes of the LLM-guided methods' proposals
ARCHITECTURE_PURPOSES = ("init", "mutate", "crossover", "llmatic_mutate", "llmatic_crossover", "genius")


def llm_made(operator: str | None) -> bool:
    """True for a trial the language model proposed (not a conventional fallback, not a failed slot)."""
    if not operator or operator.endswith(FALLBACK_SUFFIX):
        return False
    return operator.split(".", 1)[0] in LLM_OPERATORS


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _rows(db: Path) -> list[tuple[Any, ...]]:
    """(purpose, source, error, prompt, completion, latency, meta) of the log's counted calls."""
    uri = f"file:{quote(str(db.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        sql = ("SELECT purpose, source, error, prompt_tokens, completion_tokens, latency_s, meta FROM calls "
               "WHERE source != 'cache' ORDER BY id")  # fmt: skip
        return conn.execute(sql).fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()


def llm_accounting(
    db: str | Path,
    operators: Sequence[str | None],
    front_operators: Sequence[str | None] = (),
    *,
    price: tuple[float, float] | None = None,
) -> dict[str, Any] | None:
    """The accounting dict of a run (None when `db` does not exist): `operators` are the stored trials' operators
    (None for a failed slot), `front_operators` those of the feasible front, `price` USD per million prompt and
    completion tokens."""
    db = Path(db)
    if not db.is_file():
        return None
    rows = _rows(db)
    answers: dict[str, int] = {}
    reflect: dict[str, int] = {}
    prompt = completion = live = replayed = failed = 0
    latency = 0.0
    for purpose, source, error, p_tokens, c_tokens, seconds, meta_text in rows:
        prompt += int(p_tokens or 0)
        completion += int(c_tokens or 0)
        if source == "live":
            live += 1
            latency += float(seconds or 0.0)
        else:
            replayed += 1
        if error is not None:
            failed += 1
            continue
        meta = json.loads(meta_text or "{}")
        verdict = meta.get("verdict") or meta.get("outcome") or "unjudged"
        target = reflect if purpose == "reflect" else answers
        target[verdict] = target.get(verdict, 0) + 1
    slots = len(operators)
    made = sum(llm_made(op) for op in operators)
    fallback = sum(bool(op) and op.endswith(FALLBACK_SUFFIX) for op in operators)  # type: ignore[union-attr]
    first_time, repaired = _first_time(db)
    cost = None if price is None else (prompt * price[0] + completion * price[1]) / 1e6
    return {
        "calls": len(rows),
        "live_calls": live,
        "replayed_calls": replayed,
        "failed_calls": failed,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost_usd": cost,
        "seconds_per_call": round(latency / live, 3) if live else None,
        "answers": dict(sorted(answers.items())),
        "reflect_answers": dict(sorted(reflect.items())),
        "proposals": {
            "slots": slots,
            "llm": made,
            "llm_first_time": first_time,
            "llm_after_repair": repaired,
            "llm_autofixed": answers.get("autofixed", 0),
            "fallback": fallback,
            "failed": sum(op is None for op in operators),
            "llm_share": _share(made, slots),
        },
        "front": {
            "size": len(front_operators),
            "llm": sum(llm_made(op) for op in front_operators),
            "llm_share": _share(sum(llm_made(op) for op in front_operators), len(front_operators)),
        },
        "per_candidate": {
            "calls": round(len(rows) / slots, 3) if slots else None,
            "tokens": round((prompt + completion) / slots, 1) if slots else None,
        },
    }


def _first_time(db: Path) -> tuple[int, int]:
    """Valid architecture answers that were the first answer of their proposal, and those after a repair."""
    first = repaired = 0
    for purpose, _source, error, _p, _c, _l, meta_text in _rows(db):
        if error is not None or purpose not in ARCHITECTURE_PURPOSES:
            continue
        meta = json.loads(meta_text or "{}")
        if meta.get("verdict") != "valid":  # auto-fixed answers are counted apart
            continue
        if int(meta.get("attempt", 1)) <= 1:
            first += 1
        else:
            repaired += 1
    return first, repaired
