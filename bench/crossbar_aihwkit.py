"""Cross-check of the crossbar family's PCM model against IBM aihwkit: the same trained MLP, matched settings.

Two interpreters: this script runs under the project's venv (uhnas, torch), trains the digits MLP 64-64-10 once,
scores it on uhnas's PCM model for D Monte-Carlo chips, saves the weights and data, and re-runs itself under a
separate venv that has aihwkit (`--aihwkit-python`, default /tmp/aihwkit_venv/bin/python) to score the same
weights on aihwkit's `PCMLikeNoiseModel` (programmed and drifted afresh per chip). It prints, per setting, the mean,
std and 5th percentile of per-chip accuracy from both, and the mean difference in units of its Monte-Carlo standard
error (|z| < 3: agreement within Monte-Carlo error).

Matched settings: g_max 25 uS, single-pair conductances with per-column weight scaling (aihwkit mapping
weight_scaling_omega = 1, columnwise), 256x256 tiles, abs-max input scaling, 8-bit DAC and ADC, ADC bound 12,
output noise 0.04, digital bias, no bound management, no IR drop, global drift compensation on.
Run: .venv/bin/python bench/crossbar_aihwkit.py [--draws 64] [--aihwkit-python PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

SETTINGS: list[dict[str, Any]] = [
    {"name": "pcm-realistic (1 day, GDC)", "t_inference": 86400.0, "prog": 1.0, "read": 1.0, "drift": 1.0},
    {"name": "1 month, GDC", "t_inference": 2592000.0, "prog": 1.0, "read": 1.0, "drift": 1.0},
    {"name": "3x prog/read noise, 1 day, GDC", "t_inference": 86400.0, "prog": 3.0, "read": 3.0, "drift": 1.0},
    {"name": "programming noise only (3x), 1 s", "t_inference": 0.0, "prog": 3.0, "read": 0.0, "drift": 0.0},
]
MLP = {
    "layers": [
        {"type": "flatten"},
        {"type": "linear", "out_features": 64},
        {"type": "activation", "function": "relu"},
        {"type": "linear", "out_features": 10},
    ]
}


def summary(values: list[float]) -> dict[str, float]:
    """Mean, std, standard error and 5th percentile of per-chip accuracies."""
    t = torch.tensor(values, dtype=torch.float64)
    return {
        "mean": float(t.mean()),
        "std": float(t.std()),
        "se": float(t.std() / math.sqrt(len(t))),
        "p5": float(torch.quantile(t, 0.05)),
    }


def run_uhnas(draws: int, workdir: Path) -> dict[str, list[float]]:
    """Train the MLP, score it on uhnas's PCM model per setting; save weights and data for the aihwkit side."""
    from uhnas.arch import parse_architecture
    from uhnas.arch.build import build
    from uhnas.data import load_dataset
    from uhnas.evaluate import noisy_accuracy
    from uhnas.hardware.registry import load_backend
    from uhnas.train import TrainConfig, train

    data = load_dataset("digits", device="cpu")
    model = build(parse_architecture(MLP), data.input_shape, data.num_classes, seed=0)
    trained = train(model, data, TrainConfig(epochs=20))
    model.eval()
    x, y = torch.cat([data.x_val, data.x_test]), torch.cat([data.y_val, data.y_test])
    print(f"clean accuracy (val+test, {len(y)} images): {float((model(x).argmax(-1) == y).float().mean()):.4f}")
    print(f"trained in {trained.train_seconds:.1f} s")
    layers = model.matmuls()
    torch.save(
        {"w1": layers[0].weight, "b1": layers[0].bias, "w2": layers[1].weight, "b2": layers[1].bias, "x": x, "y": y},
        workdir / "model.pt",
    )
    results = {}
    for setting in SETTINGS:
        overrides = {
            "t_inference": setting["t_inference"],
            "prog_noise_scale": setting["prog"],
            "read_noise_scale": setting["read"],
            "drift_scale": setting["drift"],
        }
        backend = load_backend("pcm-realistic", overrides)
        realized = backend.realize(model, draws, torch.Generator().manual_seed(1))
        results[setting["name"]] = noisy_accuracy(realized, x, y).tolist()
    return results


def run_aihwkit(draws: int, workdir: Path) -> None:
    """(Under the aihwkit venv) score the saved weights on aihwkit per setting; write per-chip accuracies."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.nn import AnalogLinear, AnalogSequential
    from aihwkit.simulator.configs import InferenceRPUConfig
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, WeightNoiseType

    saved = torch.load(workdir / "model.pt")
    x, y = saved["x"].flatten(1), saved["y"]
    results = {}
    for setting in SETTINGS:
        config = InferenceRPUConfig()
        config.forward.inp_res = 1 / (2**8 - 2)
        config.forward.out_res = 1 / (2**8 - 2)
        config.forward.out_bound = 12.0
        config.forward.out_noise = 0.04
        config.forward.w_noise = 0.0
        config.forward.w_noise_type = WeightNoiseType.NONE
        config.forward.ir_drop = 0.0
        config.forward.bound_management = BoundManagementType.NONE
        config.forward.noise_management = NoiseManagementType.ABS_MAX
        config.mapping.digital_bias = True
        config.mapping.weight_scaling_omega = 1.0
        config.mapping.weight_scaling_columnwise = True
        config.mapping.max_input_size = 256
        config.mapping.max_output_size = 256
        config.noise_model = PCMLikeNoiseModel(
            g_max=25.0,
            prog_noise_scale=setting["prog"],
            read_noise_scale=setting["read"],
            drift_scale=setting["drift"],
        )
        config.drift_compensation = GlobalDriftCompensation()
        model = AnalogSequential(
            AnalogLinear(64, 64, rpu_config=config), torch.nn.ReLU(), AnalogLinear(64, 10, rpu_config=config)
        )
        model[0].set_weights(saved["w1"].detach(), saved["b1"].detach())
        model[2].set_weights(saved["w2"].detach(), saved["b2"].detach())
        model.eval()
        accuracies = []
        torch.manual_seed(1)
        for _ in range(draws):  # aihwkit programs one chip at a time
            model.program_analog_weights()
            model.drift_analog_weights(setting["t_inference"])
            with torch.no_grad():
                accuracies.append(float((model(x).argmax(-1) == y).float().mean()))
        results[setting["name"]] = accuracies
    (workdir / "aihwkit.json").write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--aihwkit-python", default="/tmp/aihwkit_venv/bin/python")
    parser.add_argument("--aihwkit-side", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aihwkit_side:
        run_aihwkit(args.draws, Path(args.aihwkit_side))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ours = run_uhnas(args.draws, workdir)
        command = [args.aihwkit_python, __file__, "--draws", str(args.draws), "--aihwkit-side", str(workdir)]
        subprocess.run(command, check=True)
        theirs = json.loads((workdir / "aihwkit.json").read_text())
    print(f"per-chip accuracy over {args.draws} chips: mean / std / p5 (uhnas | aihwkit), z = diff / SE")
    for setting in SETTINGS:
        name = setting["name"]
        a, b = summary(ours[name]), summary(theirs[name])
        z = (a["mean"] - b["mean"]) / math.sqrt(a["se"] ** 2 + b["se"] ** 2 + 1e-30)
        print(
            f"{name:34s} {a['mean']:.4f} / {a['std']:.4f} / {a['p5']:.4f} | "
            f"{b['mean']:.4f} / {b['std']:.4f} / {b['p5']:.4f}   z = {z:+.2f}"
        )


if __name__ == "__main__":
    main()
