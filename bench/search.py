"""Benchmark the search: throughput with 1 and 2 workers, the engine's own overhead, and final hypervolume by method.

Run: python bench/search.py              the default search (examples/digits_mzi.yaml, 260 evaluations per run: hours)
     python bench/search.py --quick      a few minutes: population 6, 2 generations x 4 offspring, 2 epochs, 2 draws
     python bench/search.py --quick --set backend=gpu-b200-fp16 --seeds 3

Prints
- wall time and evaluations per minute of the same search (same seed, so the same candidates) with 1 and 2 process
  workers, and their ratio (goal >= 1.8); worker start-up is excluded (the executor is started before the clock);
- the engine's own overhead as a share of wall time: everything but waiting for evaluations (proposals,
  selection, store writes, hypervolume, run setup; goal <= 2 %);
- over --seeds seeds at equal budget, the final hypervolume (normalised space, frozen reference) of each method,
  mean ± std, with the mean wall time per run.
Measured on whatever else the machine is doing: read the 2-worker ratio against the cores actually free.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from uhnas.config import RunConfig, load_config
from uhnas.search.engine import RunResult, run_search
from uhnas.search.events import Event
from uhnas.search.executor import ProcessExecutor, available_cores
from uhnas.search.jobs import EvalSettings, Job
from uhnas.search.methods import method_names

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "digits_mzi.yaml"
QUICK = ["population=6", "generations=2", "offspring=4", "training.epochs=2", "mc=2"]
METHODS = ("nsga2", "random", "regevo", "optuna-nsga2", "optuna-tpe")
THREADS = 1  # torch threads per worker
WARM_UP_ARCH = (
    '{"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 16}, '
    '{"type": "activation", "function": "relu"}, {"type": "linear", "out_features": 10}]}'
)
OVERHEAD_GOAL = 0.02
SPEEDUP_GOAL = 1.8


def started_executor(config: RunConfig, workers: int) -> ProcessExecutor:
    """`workers` ready process workers with one torch thread each (start-up kept out of the timings).

    One thread per worker makes 1 and 2 workers comparable: with the executor's default (cores // workers
    threads) a single worker would run two threads per candidate, which on small networks mostly adds contention.
    """
    executor = ProcessExecutor(
        workers, config.executor.timeout_s, config.executor.memory_limit_mb, torch_threads=THREADS
    )
    executor.start(wait=True)
    warm_up = [Job(-1 - i, WARM_UP_ARCH, EvalSettings.from_config(config)) for i in range(workers)]
    executor.run(warm_up)  # each worker loads the dataset and runs its first torch ops outside the timings
    return executor


def timed_run(config: RunConfig, out: Path, executor: ProcessExecutor) -> tuple[RunResult, float, float]:
    """Run one search; return its result, wall seconds and setup seconds (until the run_started event)."""
    start = time.perf_counter()
    setup: list[float] = []

    def progress(event: Event) -> None:
        if event.kind == "run_started":
            setup.append(time.perf_counter() - start)

    result = run_search(config, out, executor=executor, progress=progress)
    return result, time.perf_counter() - start, setup[0]


def throughput(config: RunConfig, work: Path) -> None:
    """Evaluations per minute with 1 and 2 workers, and the engine overhead share."""
    print(
        f"throughput: {config.method} on {config.backend}, {config.budget} evaluations, {available_cores()} "
        "cores visible"
    )
    rates = {}
    for workers in (1, 2):
        executor = started_executor(config, workers)
        try:
            result, wall, setup = timed_run(config, work / f"throughput-{workers}", executor)
        finally:
            executor.close()
        evals = len(result.records)
        rates[workers] = evals / wall * 60
        busy = sum(r.wall_seconds for r in result.records)
        share = result.engine_seconds / wall
        print(
            f"  {workers} worker{'s' if workers > 1 else ' '}: wall {wall:7.1f} s, {rates[workers]:6.1f} "
            "evaluations/min, "
            f"mean evaluation {busy / max(evals, 1):5.2f} s, engine overhead {result.engine_seconds:5.2f} s = "
            f"{share:.2%} "
            f"(goal <= {OVERHEAD_GOAL:.0%}; run setup {setup:.2f} s of it, loop "
            f"{(result.engine_seconds - setup) / wall:.2%}), "
            f"final HV {result.hypervolume:.4f}"
        )
    print(f"  speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (goal >= {SPEEDUP_GOAL}x)")


def compare(config: RunConfig, work: Path, seeds: int, methods: list[str]) -> None:
    """Final hypervolume of each method over seeds at equal budget (one shared 2-worker executor)."""
    print(f"methods: {seeds} seeds x {config.budget} evaluations each on {config.backend} (2 workers)")
    executor = started_executor(config, 2)
    try:
        for method in methods:
            volumes, walls = [], []
            for seed in range(seeds):
                run_config = config.model_copy(update={"method": method, "seed": seed})
                result, wall, _ = timed_run(run_config, work / f"{method}-{seed}", executor)
                volumes.append(result.hypervolume)
                walls.append(wall)
            std = statistics.stdev(volumes) if len(volumes) > 1 else 0.0
            print(
                f"  {method:13s} HV {statistics.mean(volumes):.4f} ± {std:.4f}   ({statistics.mean(walls):6.1f} "
                f"s per run)  {[round(v, 4) for v in volumes]}"
            )
    finally:
        executor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="search configuration (default: examples/digits_mzi.yaml)"
    )
    parser.add_argument("--quick", action="store_true", help="shrink the budget and training to run in minutes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=method_names())
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-methods", action="store_true")
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    config = load_config(args.config, [*(QUICK if args.quick else []), *args.set])
    print(
        f"config {args.config}{' --quick' if args.quick else ''} {' '.join(args.set)}: population {config.population}, "
        f"{config.generations} generations x {config.offspring}, epochs {config.training.epochs}, mc "
        f"{config.mc}, backend {config.backend}"
    )
    with tempfile.TemporaryDirectory(prefix="uhnas-bench-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        start = time.perf_counter()
        if not args.skip_throughput:
            throughput(config, work)
        if not args.skip_methods:
            compare(config, work, args.seeds, args.methods)
        print(f"total wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
