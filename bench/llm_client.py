"""Per-call cost of uhnas's LLM client against a bare openai SDK call, both to the same loopback fake server.

Measures, in one run: a bare `openai` chat completion, our client on a cache miss (live call + SQLite log and
answer index), and our client on a cache hit (no network). Prints µs per call and ratios to the bare SDK call.
Run: .venv/bin/python bench/llm_client.py [--calls N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_llm_server import FakeLLMServer  # noqa: E402
from uhnas.config import LLMSection  # noqa: E402
from uhnas.llm.cache import ResponseCache  # noqa: E402
from uhnas.llm.client import LLMClient, LLMConfig  # noqa: E402


def messages(i: int, tag: str) -> list[dict[str, str]]:
    """A small, distinct chat per call (distinct so live runs never hit the cache)."""
    return [
        {"role": "system", "content": "You design neural networks for photonic hardware."},
        {"role": "user", "content": f"[{tag} {i}] Mutate the parent architecture; answer with JSON."},
    ]


def timed_us(fn: Callable[[], object]) -> float:
    """Wall time of one call in µs."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def main() -> None:
    """Interleave bare and live calls pairwise (robust to load drift), then time the cache-hit path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="paired calls measured (after a short warm-up)")
    args = parser.parse_args()
    warmup = 30

    with FakeLLMServer() as server, tempfile.TemporaryDirectory() as tmp:
        bare = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=30)
        config = LLMConfig.from_section(LLMSection(model="fake-model", base_url=server.base_url, max_tokens=256))
        db = Path(tmp) / "llm.db"

        def bare_call(i: int) -> object:
            chat: Any = messages(i, "bare")
            return bare.chat.completions.create(
                model="fake-model", messages=chat, temperature=0.7, max_tokens=256, seed=1
            )

        bare_us: list[float] = []
        live_us: list[float] = []
        with ResponseCache(db) as cache, LLMClient(config, cache) as client:
            for i in range(warmup + args.calls):
                b = timed_us(lambda: bare_call(i))
                u = timed_us(lambda: client.complete(messages(i, "uhnas"), purpose="bench", seed=1))
                if i >= warmup:
                    bare_us.append(b)
                    live_us.append(u)
        with ResponseCache(db) as cache, LLMClient(config, cache) as client:
            hit_us = [
                timed_us(lambda: client.complete(messages(i, "uhnas"), purpose="bench", seed=1))
                for i in range(warmup + args.calls)
            ][warmup:]
            assert client.usage.total.replayed_calls == warmup + args.calls, "cache-hit path went to the server"
        bare.close()

    b, live, hit = (statistics.median(x) for x in (bare_us, live_us, hit_us))
    overhead = statistics.median(u - v for u, v in zip(live_us, bare_us))
    print(f"loopback fake server, {args.calls} interleaved call pairs (medians per call)")
    print(f"  bare openai SDK call     : {b:8.0f} µs  (reference)")
    print(f"  uhnas client, live miss  : {live:8.0f} µs  ratio {live / b:5.2f}x  paired overhead {overhead:+.0f} µs")
    print(f"  uhnas client, cache hit  : {hit:8.0f} µs  ratio {hit / b:5.3f}x  ({b / hit:.0f}x cheaper than bare)")


if __name__ == "__main__":
    main()
