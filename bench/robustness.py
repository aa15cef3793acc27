"""Cost of a whole Monte-Carlo robustness evaluation against the candidate's own training time.

For each example network on digits: train 20 epochs (uhnas.train), then realise the MZI backend for 32
draws and score the validation set. Goal: the MC evaluation costs under a quarter of the training time.
Each network first runs one untimed repeat (it loads the compiled kernels from Numba's cache, once per process,
as a search's long-lived workers do). Times are medians over --repeats of process CPU time (one thread, so CPU
time ~ wall time on an idle core and robust to other processes on a loaded one); the trainer's own wall-clock
figure is printed for reference.

The floor: the detector adds one Gaussian sample to every detected partial sum, i.e. per draw and input vector
`rows x column tiles` samples per layer (`energy.map_layers`: detected outputs x reuse). `normals` counts them
for the whole evaluation; `RNG floor` is that count times the cost of one sample from the detector-noise source on
a CPU (the counter-based discretised normal of `uhnas.hardware.counter_rng`, filled into a buffer), measured in the
same run; torch's own normal_ is timed for comparison. No formulation that keeps the detector noise and draws it
this way can score faster than that.

Run: .venv/bin/python bench/robustness.py [--backend mzi-realistic] [--draws 32] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from uhnas.allocator import keep_freed_memory
from uhnas.arch import analyze, load_architecture
from uhnas.arch.build import build
from uhnas.data import load_dataset
from uhnas.evaluate import noisy_accuracy
from uhnas.hardware.counter_rng import fill_normals
from uhnas.hardware.mzi import energy
from uhnas.hardware.registry import load_backend
from uhnas.hardware.sampling import quantile_table
from uhnas.train import TrainConfig, train

EXAMPLES = ("mlp_digits", "cnn_digits", "onn_digits")


def cpu_seconds(fn):
    """(fn(), process CPU seconds it took)."""
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def normal_ns(repeats: int = 5, size: int = 1 << 17) -> float:
    """Median CPU ns per detector-noise sample: the counter-based discretised normal (the CPU noise source)."""
    buf, table = np.empty(size, dtype=np.float32), quantile_table(torch.float32).numpy()
    fill = lambda: fill_normals(np.uint64(0), np.int64(0), table, buf)  # noqa: E731
    fill()
    return 1e9 * statistics.median(cpu_seconds(fill)[1] for _ in range(repeats)) / size


def torch_normal_ns(repeats: int = 5, size: int = 1 << 17) -> float:
    """Median CPU ns per float32 standard normal from torch's CPU generator (for comparison)."""
    buf, gen = torch.empty(size), torch.Generator().manual_seed(0)
    buf.normal_(generator=gen)
    return 1e9 * statistics.median(cpu_seconds(lambda: buf.normal_(generator=gen))[1] for _ in range(repeats)) / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="mzi-realistic")
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = keep_freed_memory()  # as the uhnas command and its workers do (uhnas.allocator)
    data = load_dataset("digits")
    backend = load_backend(args.backend)
    images = len(data.y_val)
    print(
        f"{args.backend}, {args.draws} draws, digits validation ({images} images), {args.threads} thread(s); "
        f"1-minute load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; allocator keeps freed memory: {tuned}"
    )
    print(
        f"each repeat trains, realises, scores and times one normal back to back; ratios are medians of the "
        f"per-repeat ratios (their range in brackets), times medians of {args.repeats} (process CPU s; trainer's "
        f"wall s in brackets)"
    )
    print(
        f"{'network':<12}{'train s':>9}{'(wall)':>8}{'realize s':>11}{'score s':>9}{'MC / train':>12}{'(range)':>13}"
        f"{'normals':>10}{'ns/normal':>11}{'RNG floor s':>13}{'floor/train':>13}{'clean':>8}{'noisy':>8}"
    )
    for name in EXAMPLES:
        arch = load_architecture(f"examples/{name}.json")
        summary = analyze(arch, data.input_shape, data.num_classes)
        per_image = sum(m.detected_outputs * m.reuse for m in energy.map_layers(summary, backend.params.mesh_size))  # type: ignore[attr-defined]
        normals = per_image * images * args.draws if backend.detector_sigma > 0 else 0  # type: ignore[attr-defined]
        rows: dict[str, list[float]] = {key: [] for key in ("train", "wall", "realize", "score", "ns", "mc", "floor")}
        for repeat in range(-1, args.repeats):  # repeat -1 is not timed: it loads the compiled kernels (once per
            model = build(arch, data.input_shape, data.num_classes, seed=0)  # process, as in a search's workers)
            trained, train_s = cpu_seconds(lambda: train(model, data, TrainConfig(epochs=20, seed=0)))  # noqa: B023
            model.eval()
            realized, realize_s = cpu_seconds(
                lambda: backend.realize(model, args.draws, torch.Generator().manual_seed(repeat))
            )  # noqa: B023
            per_draw, score_s = cpu_seconds(lambda: noisy_accuracy(realized, data.x_val, data.y_val))  # noqa: B023
            ns = normal_ns()
            if repeat < 0:
                continue
            for key, value in (
                ("train", train_s),
                ("wall", trained.train_seconds),
                ("realize", realize_s),
                ("score", score_s),
                ("ns", ns),
                ("mc", (realize_s + score_s) / train_s),
                ("floor", normals * ns * 1e-9 / train_s),
            ):
                rows[key].append(value)
        med = {key: statistics.median(values) for key, values in rows.items()}
        spread = f"({min(rows['mc']):.2f}-{max(rows['mc']):.2f})"  # the per-repeat ratios: this VM's speed varies
        print(
            f"{name:<12}{med['train']:>9.3f}{med['wall']:>8.3f}{med['realize']:>11.3f}{med['score']:>9.3f}"
            f"{med['mc']:>11.2f}x{spread:>13}"
            f"{normals / 1e6:>9.1f}M{med['ns']:>11.2f}{normals * med['ns'] * 1e-9:>13.3f}"
            f"{med['floor']:>12.2f}x{trained.accuracy:>8.3f}{float(per_draw.mean()):>8.3f}"
        )
    print(f"torch's CPU normal_: {torch_normal_ns():.2f} ns per sample (the stream above: {normal_ns():.2f} ns)")
    print(f"1-minute load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
