"""A small `uhnas` search against a real OpenAI-compatible server: how well does this model fill the slots?

Runs `uhnas` (NSGA-II with the LLM operator) on digits with real training (few epochs, few Monte-Carlo draws) and
prints, per slot of the budget: the share filled by a valid LLM answer the first time, after one repair, after
more calls, by an auto-fixed answer, and by the conventional fallback; calls and tokens per candidate; seconds per
call (and completion tokens per second of call time); the LLM's share of the final front; the front's energy
range, diversity and hypervolume (to compare niche steering on and off).

    # llama.cpp's llama-server (see ../shared/real_llm/README.md), Ollama or vLLM
    .venv/bin/python bench/llm_real.py --base-url http://127.0.0.1:8092/v1 --model qwen2.5-coder-1.5b
    .venv/bin/python bench/llm_real.py --base-url http://127.0.0.1:11434/v1 --model qwen2.5:7b --budget paper

Budgets: small = population 4 + 2 generations x 3 offspring (10 slots, ~5-15 minutes with a 1.5B model on two
CPU cores); paper = population 20 + 30 x 8 (260 slots). Not part of the test suite: it needs a running server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from uhnas.config import load_config
from uhnas.llm.cache import CallLog
from uhnas.search.engine import run_search
from uhnas.store import open_run

BUDGETS = {"small": ("population=4", "generations=2", "offspring=3"),
           "paper": ("population=20", "generations=30", "offspring=8")}  # fmt: skip
ARCH_PURPOSES = ("init", "mutate", "crossover")


def slot_outcomes(out: Path) -> dict[str, int]:
    """How each slot was filled: first | one_repair | more_calls | autofixed | fallback | failed."""
    log = CallLog(out / "llm.db")
    try:
        calls = [c for c in log.calls() if c["purpose"] in ARCH_PURPOSES and c["source"] == "live"]
    finally:
        log.close()
    by_slot: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        by_slot[(c["meta"].get("generation"), c["meta"].get("slot"))].append(c)
    outcomes = dict.fromkeys(("first", "one_repair", "more_calls", "autofixed", "fallback", "failed"), 0)
    for record in open_run(out).records():
        operator = record.operator or ""
        if record.arch is None:
            outcomes["failed"] += 1
        elif operator.endswith("(llm-fallback)"):
            outcomes["fallback"] += 1
        else:
            slot_calls = by_slot.get((record.generation, record.slot), [])
            index = next((i for i, c in enumerate(slot_calls, 1) if c["meta"].get("verdict") in ("valid", "autofixed")
                          and c["meta"].get("arch_hash") == record.hash), len(slot_calls))  # fmt: skip
            verdict = slot_calls[index - 1]["meta"].get("verdict") if slot_calls else "valid"
            if verdict == "autofixed":
                outcomes["autofixed"] += 1
            else:
                outcomes["first" if index <= 1 else "one_repair" if index == 2 else "more_calls"] += 1
    return outcomes


def _rounded(value: float | None, digits: int = 2) -> float | None:
    """A figure for printing: `digits` decimals (None stays None: an empty front has no range)."""
    return None if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/llm_real-<time>)")
    parser.add_argument("--backend", default="mzi-realistic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steering", choices=("energy", "none"), default="energy")
    parser.add_argument("--autofix", choices=("on", "off"), default="on")
    parser.add_argument("--system-prompt", default="hardware-aware")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per LLM call")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--mc", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    out = args.out or Path("runs") / f"llm_real-{time.strftime('%Y%m%d-%H%M%S')}"
    config = load_config(None, [
        "method=uhnas", "dataset=digits", f"backend={args.backend}", f"seed={args.seed}", *BUDGETS[args.budget],
        f"training.epochs={args.epochs}", f"mc={args.mc}", "executor.kind=inline", "evolution.max_attempts=3",
        "llm.provider=openai", f"llm.model={args.model}", f"llm.base_url={args.base_url}",
        f"llm.timeout_s={args.timeout}", f"llm.max_tokens={args.max_tokens}", f"llm.steering={args.steering}",
        f"llm.autofix={'true' if args.autofix == 'on' else 'false'}", f"llm.system_prompt={args.system_prompt}",
    ])  # fmt: skip
    t0 = time.perf_counter()
    result = run_search(config, out)
    wall = time.perf_counter() - t0
    store = open_run(out)
    acc = store.llm_accounting()
    assert acc is not None
    outcomes = slot_outcomes(out)
    slots = config.budget
    log = CallLog(out / "llm.db")
    try:
        live = [c for c in log.calls() if c["source"] == "live" and c["error"] is None]
    finally:
        log.close()
    seconds = sum(c["latency_s"] for c in live)
    gen_rate = sum(c["completion_tokens"] for c in live) / seconds if seconds else 0.0
    diversity = result.summary["diversity"]
    figures = {
        "model": args.model, "budget": args.budget, "slots": slots, "wall_s": round(wall, 1),
        "steering": args.steering, "autofix": args.autofix, "seed": args.seed,
        "valid_first_time": round(outcomes["first"] / slots, 3),
        "valid_after_one_repair": round(outcomes["one_repair"] / slots, 3),
        "valid_after_more_calls": round(outcomes["more_calls"] / slots, 3),
        "autofixed": round(outcomes["autofixed"] / slots, 3),
        "fallback": round(outcomes["fallback"] / slots, 3),
        "failed": round(outcomes["failed"] / slots, 3),
        "llm_within_one_repair": round((outcomes["first"] + outcomes["one_repair"]) / slots, 3),
        "calls_per_candidate": acc["per_candidate"]["calls"], "tokens_per_candidate": acc["per_candidate"]["tokens"],
        "prompt_tokens_per_call": round(acc["prompt_tokens"] / max(1, acc["calls"])),
        "completion_tokens_per_call": round(acc["completion_tokens"] / max(1, acc["calls"])),
        "seconds_per_call": acc["seconds_per_call"], "completion_tokens_per_call_second": round(gen_rate, 1),
        "answers": acc["answers"], "reflect_answers": acc["reflect_answers"],
        "front_size": acc["front"]["size"], "front_llm": acc["front"]["llm"],
        "hypervolume": round(result.hypervolume, 4),
        "front_energy_range_decades": _rounded(diversity["front_energy_range_decades"]),
        "front_mean_distance": _rounded(diversity["front_mean_distance"]),
    }  # fmt: skip
    print(f"{args.model} on {args.base_url}: uhnas, {args.budget} budget ({slots} slots), backend {args.backend}, "
          f"steering {args.steering}, autofix {args.autofix}: {wall:.0f} s wall -> {out}")  # fmt: skip
    print(f"  slots filled by the LLM: first time {figures['valid_first_time']:.0%}, after one repair "
          f"{figures['valid_after_one_repair']:.0%}, after more calls {figures['valid_after_more_calls']:.0%}, "
          f"auto-fixed {figures['autofixed']:.0%}; conventional fallback {figures['fallback']:.0%}, "
          f"failed {figures['failed']:.0%}")  # fmt: skip
    print(f"  LLM within <= 1 repair (auto-fixes apart): {figures['llm_within_one_repair']:.0%}")
    print(f"  calls per candidate {figures['calls_per_candidate']}, tokens per candidate "
          f"{figures['tokens_per_candidate']:,.0f} ({figures['prompt_tokens_per_call']:,} prompt + "
          f"{figures['completion_tokens_per_call']:,} completion per call); {figures['seconds_per_call']} s per call, "
          f"{figures['completion_tokens_per_call_second']} completion tokens per second of call time")  # fmt: skip
    print(f"  answers by verdict: {acc['answers']}; reflect: {acc['reflect_answers']}")
    print(f"  final front: {acc['front']['llm']} of {acc['front']['size']} by the LLM; hypervolume "
          f"{result.hypervolume:.4f}; energy range {figures['front_energy_range_decades']} decades; "
          f"mean distance {figures['front_mean_distance']}")  # fmt: skip
    if figures["fallback"] > 0:
        print(f"  note: the conventional operator filled {outcomes['fallback']} of {slots} slots (llm-fallback)")
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
