"""Niche steering with the scripted model: the front's energy range, diversity and hypervolume with and without it.

`uhnas` runs against the loopback fake OpenAI server (tests/llm_responders.py's cooperative model, which follows a
target's "make it smaller / larger" when the prompt names one), evaluations by the synthetic no-training executor
(accuracy grows with parameters, energy is the backend's), for several seeds, with `llm.steering` energy and none.
What it measures is the mechanism (targets rotate over the sparse bands of the front and the proposals follow
them), not a real model's response to it: bench/llm_real.py --steering energy|none does that.

Run: .venv/bin/python bench/llm_steering.py [--seeds 3] [--generations 10] [--backend mzi-realistic]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_llm_server import FakeLLMServer  # noqa: E402
from llm_responders import ArchResponder, SyntheticExecutor  # noqa: E402
from uhnas.config import load_config  # noqa: E402
from uhnas.search.engine import run_search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--offspring", type=int, default=6)
    parser.add_argument("--backend", default="mzi-realistic")
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float, float, int]]] = {"energy": [], "none": []}
    with tempfile.TemporaryDirectory() as tmp, FakeLLMServer(responder=ArchResponder(hostile=False)) as server:
        for seed in range(args.seeds):
            for steering in rows:
                config = load_config(None, [
                    "method=uhnas", f"backend={args.backend}", f"seed={seed}", f"population={args.population}",
                    f"generations={args.generations}", f"offspring={args.offspring}", "training.epochs=1", "mc=2",
                    "executor.kind=inline", "llm.model=fake-model", f"llm.base_url={server.base_url}",
                    f"llm.steering={steering}",
                ])  # fmt: skip
                result = run_search(config, Path(tmp) / f"{steering}-{seed}", executor=SyntheticExecutor())
                d = result.summary["diversity"]
                rows[steering].append((d["front_energy_range_decades"] or 0.0, d["front_mean_distance"] or 0.0,
                                       result.hypervolume, result.summary["front_size"]))  # fmt: skip
    budget = args.population + args.generations * args.offspring
    print(f"uhnas with the scripted model, {budget} candidates, backend {args.backend}, seeds 0..{args.seeds - 1}")
    print("  steering  front energy range (decades)  front mean distance  hypervolume  front size   (mean over seeds)")
    for steering, values in rows.items():
        energy, distance, hv, size = (statistics.mean(v[i] for v in values) for i in range(4))
        print(f"  {steering:8s}  {energy:30.3f}  {distance:19.3f}  {hv:11.4f}  {size:10.1f}")
    for i, (on, off) in enumerate(zip(rows["energy"], rows["none"])):
        print(f"    seed {i}: energy {on[0]:.2f} vs {off[0]:.2f} decades, distance {on[1]:.3f} vs {off[1]:.3f}, "
              f"HV {on[2]:.4f} vs {off[2]:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
