"""Record and replay cost of an LLM-guided search at the paper's budget, and the invalid-answer mix under faults.

1. record: a `uhnas` run of population 20 + 30 generations x 8 offspring (260 candidates) against the loopback
   fake OpenAI server (a scripted cooperative model, tests/llm_responders.py), evaluations replaced by the
   synthetic no-training executor, so what is timed is the engine plus the LLM path;
2. replay: the same run from the recorded llm.db with the network forbidden (provider replay:<dir>, base URL on
   a closed port, server stopped) — checks that every trial is identical;
3. reference: `nsga2` (random operators, no LLM) on the same budget and executor: the engine alone;
4. faults: the same budget against a server that answers every 4th architecture request with a fault from a fixed
   cycle (malformed JSON, schema violation, unknown layer type, impossible shape, duplicate, prose-wrapped JSON,
   slow answer, 429 with Retry-After, 500, dropped connection); prints what the validator saw and what it cost.

Per-call overhead is the time spent inside LLMClient.complete (rendering is outside it): in the record phase it
includes the loopback HTTP round trip and the fake server; in replay it is the cache lookup and the call-log write.
Token counts are the fake server's estimate (4 characters per token), close to real tokenizers on English text.
Run: .venv/bin/python bench/llm_replay.py [--generations 30] [--backend ideal] [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_llm_server import FakeLLMServer, closed_port_url  # noqa: E402
from llm_responders import ArchResponder, FaultPlan, SyntheticExecutor  # noqa: E402
from uhnas.config import RunConfig, load_config  # noqa: E402
from uhnas.llm import client as llm_client  # noqa: E402
from uhnas.llm.cache import CallLog  # noqa: E402
from uhnas.llm.client import LLMClient  # noqa: E402
from uhnas.search.engine import run_search  # noqa: E402
from uhnas.store import open_run  # noqa: E402


class CompleteTimer:
    """Times every LLMClient.complete call (patched on the class for the duration of a phase)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._original = LLMClient.complete

    def __enter__(self) -> CompleteTimer:
        original, timer = self._original, self

        def timed(client: LLMClient, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(client, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.calls += 1

        LLMClient.complete = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        LLMClient.complete = self._original  # type: ignore[method-assign]

    @property
    def ms_per_call(self) -> float:
        return 1000 * self.seconds / max(1, self.calls)


def config(method: str, base_url: str, generations: int, backend: str, *extra: str) -> RunConfig:
    """The paper's budget (population 20, `generations` x 8 offspring) for `method`."""
    return load_config(None, [
        f"method={method}", f"backend={backend}", "population=20", f"generations={generations}", "offspring=8",
        "training.epochs=1", "mc=2", "executor.kind=inline", "llm.model=fake-model", f"llm.base_url={base_url}",
        *extra,
    ])  # fmt: skip


def timed_run(cfg: RunConfig, out: Path) -> float:
    """Wall seconds of one synthetic run."""
    t0 = time.perf_counter()
    run_search(cfg, out, executor=SyntheticExecutor())
    return time.perf_counter() - t0


def trials(out: Path) -> set[tuple[Any, ...]]:
    """What must match between the record and the replay."""
    return {(r.hash, r.generation, r.slot, r.error, r.energy_nj, r.state, r.operator, r.parents)
            for r in open_run(out).records()}  # fmt: skip


def log_of(out: Path) -> list[dict[str, Any]]:
    log = CallLog(out / "llm.db")
    try:
        return log.calls()
    finally:
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--backend", default="ideal")
    parser.add_argument("--fault-period", type=int, default=4, help="every N-th architecture request is a fault")
    parser.add_argument("--seeds", type=int, default=1, help="record this many run seeds for the token figure")
    args = parser.parse_args()
    llm_client.BACKOFF_BASE_S, llm_client.BACKOFF_MAX_S = 0.005, 0.05  # dropped connections: retry at once
    budget = 20 + 8 * args.generations

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with FakeLLMServer(responder=ArchResponder()) as server:
            record_cfg = config("uhnas", server.base_url, args.generations, args.backend)
            with CompleteTimer() as rec_timer:
                record_s = timed_run(record_cfg, tmp / "record")
            requests = len(server.chat_requests)
        replay_cfg = config(
            "uhnas", closed_port_url(), args.generations, args.backend, f"llm.provider=replay:{tmp / 'record'}"
        )
        with CompleteTimer() as rep_timer:
            replay_s = timed_run(replay_cfg, tmp / "replay")
        identical = trials(tmp / "record") == trials(tmp / "replay")
        reference_s = timed_run(config("nsga2", "http://unused", args.generations, args.backend), tmp / "nsga2")

        calls = log_of(tmp / "record")
        replayed = log_of(tmp / "replay")
        by_purpose: dict[str, list[int]] = {}
        for c in calls:
            entry = by_purpose.setdefault(c["purpose"], [0, 0, 0])
            entry[0] += 1
            entry[1] += c["prompt_tokens"]
            entry[2] += c["completion_tokens"]
        prompt = sum(v[1] for v in by_purpose.values())
        completion = sum(v[2] for v in by_purpose.values())

        print(f"uhnas, {budget} candidates (population 20 + {args.generations} x 8), backend {args.backend}, "
              "synthetic evaluations, loopback fake server")  # fmt: skip
        print(f"  record : {record_s:7.2f} s wall, {len(calls)} LLM calls ({requests} HTTP requests), "
              f"{rec_timer.ms_per_call:6.2f} ms per call in client+cache+HTTP")  # fmt: skip
        print(f"  replay : {replay_s:7.2f} s wall, {len(replayed)} calls all from the log "
              f"({sorted({c['source'] for c in replayed})}), {rep_timer.ms_per_call:6.2f} ms per call in client+cache; "
              f"trials identical: {identical}")  # fmt: skip
        print(f"  nsga2  : {reference_s:7.2f} s wall (same engine and budget, no LLM) -> replay/nsga2 "
              f"{replay_s / reference_s:.2f}x, record/nsga2 {record_s / reference_s:.2f}x")  # fmt: skip
        print(f"  tokens : {prompt:,} prompt + {completion:,} completion = {prompt + completion:,} "
              f"({len(calls) / budget:.2f} calls, {(prompt + completion) / budget:,.0f} tokens per "
              "candidate)")  # fmt: skip
        for purpose, (n, p, c) in sorted(by_purpose.items()):
            print(f"    {purpose:10s} {n:4d} calls, {p / n:7,.0f} prompt + {c / n:5,.0f} completion tokens per call")

        if args.seeds > 1:  # the duplicate rate, hence the repair calls, varies with the run's trajectory
            per_seed = [(prompt + completion) / budget]
            for seed in range(1, args.seeds):
                with FakeLLMServer(responder=ArchResponder()) as server:
                    cfg = config("uhnas", server.base_url, args.generations, args.backend, f"seed={seed}")
                    timed_run(cfg, tmp / f"record-{seed}")
                seed_calls = log_of(tmp / f"record-{seed}")
                per_seed.append(sum(c["prompt_tokens"] + c["completion_tokens"] for c in seed_calls) / budget)
            print(f"  tokens per candidate over seeds 0-{args.seeds - 1}: mean {sum(per_seed) / len(per_seed):,.0f}, "
                  f"min {min(per_seed):,.0f}, max {max(per_seed):,.0f} "
                  f"({', '.join(f'{t:,.0f}' for t in per_seed)})")  # fmt: skip

        with FakeLLMServer(responder=FaultPlan.every(ArchResponder(), period=args.fault_period)) as server:
            plan = server.responder
            fault_cfg = config("uhnas", server.base_url, args.generations, args.backend, "llm.timeout_s=5")
            fault_s = timed_run(fault_cfg, tmp / "faults")
            http = len(server.chat_requests)
        records = open_run(tmp / "faults").records()
        flog = log_of(tmp / "faults")
        arch_calls = [c for c in flog if c["purpose"] != "reflect"]
        verdicts = Counter(c["meta"].get("verdict", "?") for c in arch_calls)
        repaired = sum(1 for r in records if r.metadata.get("llm", {}).get("repairs", 0) > 0)
        failed_slots = sum(1 for r in records if r.arch is None)
        fallback = sum(1 for r in records if (r.operator or "").endswith("(llm-fallback)"))
        refused = sum(len(r.rejected) for r in records)
        ftokens = sum(c["prompt_tokens"] + c["completion_tokens"] for c in flog)
        print(f"\nfault mix: every {args.fault_period}th architecture request faulty, cycling "
              f"{', '.join(sorted(set(plan.served)))} ({len(plan.served)} faults served)")  # fmt: skip
        print(
            f"  {fault_s:.2f} s wall, {len(flog)} LLM calls ({http} HTTP requests incl. retries), "
            f"{ftokens / budget:,.0f} tokens per candidate ({ftokens / (prompt + completion):.2f}x the clean run)"
        )
        kinds = ("valid", "autofixed", "malformed", "truncated", "schema", "shape", "constraint", "duplicate")
        shown = [f"{k} {verdicts[k]}" for k in kinds if k in verdicts or k == "valid"]
        print("  architecture answers: " + ", ".join(shown))
        print(f"  proposals repaired: {repaired}; slot attempts refused: {refused}; failed slots: {failed_slots}; "
              f"conventional fallback: {fallback}; "
              f"transport retries: {sum(max(0, c['attempts'] - 1) for c in flog)}")  # fmt: skip


if __name__ == "__main__":
    main()
