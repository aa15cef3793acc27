"""What the HTML report shows of a run's LLM call log (`<run dir>/llm.db`, `uhnas.llm.cache`), read-only.

Per operator (the call's purpose: init, mutate, crossover, reflect, ...): calls, failed calls, tokens, cost and
seconds per call, counted like `uhnas.llm.accounting` (rows a resumed run re-derived from its own cache are not
counted again); the answers by verdict per operator; and a few calls to inspect with their prompts and answers.
The file is opened read-only, so reporting a run never changes its log.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

VERDICTS = ("valid", "autofixed", "malformed", "schema", "shape", "constraint", "duplicate", "truncated")
SAMPLES_PER_PURPOSE = 2  # the first valid and the first invalid answer of each operator
MAX_SAMPLES = 10


def _calls(db: Path) -> list[dict[str, Any]]:
    """Every logged call with its request body (the columns of uhnas.llm.cache's `calls` table), in order."""
    uri = f"file:{quote(str(db.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        cur = conn.execute(
            "SELECT c.*, r.body AS request FROM calls c LEFT JOIN requests r ON r.key = c.key ORDER BY c.id"
        )
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row)) for row in cur.fetchall()]
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()
    for row in rows:
        row["meta"] = _loads(row.get("meta"), {})
        row["request"] = _loads(row.get("request"), None)
    return rows


def _loads(text: Any, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except (TypeError, ValueError):
        return default


def _verdict(call: dict[str, Any]) -> str:
    if call.get("error") is not None:
        return "error"
    meta = call["meta"] if isinstance(call.get("meta"), dict) else {}
    return str(meta.get("verdict") or meta.get("outcome") or "unjudged")


def llm_log(db: str | Path, price: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """Per-operator usage, verdicts per operator and sample calls of a run's log; None without a log."""
    db = Path(db)
    if not db.is_file():
        return None
    calls = _calls(db)
    counted = [c for c in calls if c.get("source") != "cache"]
    by_purpose: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, int]] = {}
    for call in counted:
        purpose = str(call.get("purpose") or "?")
        row = by_purpose.setdefault(
            purpose,
            {"operator": purpose, "calls": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency": 0.0,
             "live": 0},
        )  # fmt: skip
        row["calls"] += 1
        row["failed"] += call.get("error") is not None
        row["prompt_tokens"] += int(call.get("prompt_tokens") or 0)
        row["completion_tokens"] += int(call.get("completion_tokens") or 0)
        if call.get("source") == "live":
            row["live"] += 1
            row["latency"] += float(call.get("latency_s") or 0.0)
        counts = verdicts.setdefault(purpose, {})
        verdict = _verdict(call)
        counts[verdict] = counts.get(verdict, 0) + 1
    usage = []
    for row in by_purpose.values():
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        cost = None if price is None else (row["prompt_tokens"] * price[0] + row["completion_tokens"] * price[1]) / 1e6
        usage.append(
            {
                "operator": row["operator"],
                "calls": row["calls"],
                "failed": row["failed"],
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "tokens": tokens,
                "cost_usd": cost,
                "seconds_per_call": round(row["latency"] / row["live"], 3) if row["live"] else None,
            }
        )
    present = {v for counts in verdicts.values() for v in counts}
    columns = [v for v in VERDICTS if v in present] + sorted(present - set(VERDICTS))
    verdict_rows = [{"operator": p, **{v: counts.get(v, 0) for v in columns}} for p, counts in verdicts.items()]
    return {
        "usage": usage,
        "verdict_columns": columns,
        "verdicts": verdict_rows,
        "samples": _samples(calls),
        "calls_logged": len(calls),
    }


def _samples(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few calls worth reading: per operator the first valid answer and the first that was not valid."""
    chosen: list[dict[str, Any]] = []
    seen: set[tuple[str, bool]] = set()
    for call in calls:
        key = (str(call.get("purpose")), _verdict(call) == "valid")
        if key in seen or len(chosen) >= MAX_SAMPLES:
            continue
        seen.add(key)
        chosen.append(call)
    chosen.sort(key=lambda c: c["id"])
    out = []
    for call in chosen:
        meta = call["meta"] if isinstance(call.get("meta"), dict) else {}
        request = call.get("request") if isinstance(call.get("request"), dict) else {}
        messages = request.get("messages") if isinstance(request.get("messages"), list) else []
        out.append(
            {
                "id": call["id"],
                "operator": call.get("purpose"),
                "verdict": _verdict(call),
                "generation": meta.get("generation"),
                "slot": meta.get("slot"),
                "attempt": meta.get("attempt"),
                "errors": [str(e) for e in meta.get("errors") or []],
                "error": call.get("error"),
                "prompt_tokens": call.get("prompt_tokens"),
                "completion_tokens": call.get("completion_tokens"),
                "messages": [
                    {"role": str(m.get("role")), "content": str(m.get("content"))}
                    for m in messages
                    if isinstance(m, dict)
                ],
                "answer": call.get("text"),
            }
        )
    return out


__all__ = ["VERDICTS", "llm_log"]
