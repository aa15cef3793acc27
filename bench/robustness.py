"""Cost of a whole Monte-Carlo robustness evaluation against the candidate's own training time.

For each example network on digits: train 20 epochs (uhnas.train), then realise the MZI backend for 32
draws and score the validation set. Goal: the MC evaluation costs under a quarter of the training time.
Run: .venv/bin/python bench/robustness.py [--backend mzi-realistic] [--draws 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from uhnas.arch import build, load_architecture
from uhnas.data import load_dataset
from uhnas.evaluate import noisy_accuracy
from uhnas.hardware.registry import load_backend
from uhnas.train import TrainConfig, train

EXAMPLES = ("mlp_digits", "cnn_digits", "onn_digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="mzi-realistic")
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    backend = load_backend(args.backend)
    print(f"{args.backend}, {args.draws} draws, digits validation ({len(data.y_val)} images), {args.threads} thread(s); "
          f"median of {args.repeats}; the machine may be loaded by other processes")
    print(f"{'network':<12}{'train s':>9}{'realize s':>11}{'score s':>9}{'MC / train':>12}{'clean':>8}{'noisy':>8}")
    for name in EXAMPLES:
        arch = load_architecture(f"examples/{name}.json")
        model = build(arch, data.input_shape, data.num_classes, seed=0)
        trained = train(model, data, TrainConfig(epochs=20, seed=0))
        realize_s, score_s = [], []
        for repeat in range(args.repeats):
            model.eval()
            t0 = time.perf_counter()
            realized = backend.realize(model, args.draws, torch.Generator().manual_seed(repeat))
            t1 = time.perf_counter()
            per_draw = noisy_accuracy(realized, data.x_val, data.y_val)
            t2 = time.perf_counter()
            realize_s.append(t1 - t0)
            score_s.append(t2 - t1)
        mc = statistics.median(realize_s) + statistics.median(score_s)
        print(f"{name:<12}{trained.train_seconds:>9.2f}{statistics.median(realize_s):>11.3f}{statistics.median(score_s):>9.3f}"
              f"{mc / trained.train_seconds:>11.2f}x{trained.accuracy:>8.3f}{float(per_draw.mean()):>8.3f}")


if __name__ == "__main__":
    main()
