"""The `uhnas` command: outputs, JSON mode, and one-line errors with non-zero exits (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from uhnas.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_schema_is_json():
    result = invoke("arch", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["properties"]["layers"]["maxItems"] == 32


def test_arch_check_table_and_json():
    result = invoke("arch", "check", "examples/cnn_digits.json")
    assert result.exit_code == 0 and "total" in result.stdout and "23,680" in result.stdout
    data = json.loads(invoke("arch", "check", "examples/cnn_digits.json", "--json", "--dataset", "mnist").stdout)
    assert data["input_shape"] == [1, 28, 28]
    assert data["layers"][0]["out_shape"] == [8, 28, 28]
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])


def test_evaluate_json_has_the_promised_keys():
    result = invoke(
        "evaluate", "examples/mlp_digits.json", "--epochs", "3", "--mc", "2", "--backend", "gpu-b200-fp16", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in (
        "arch_hash",
        "params",
        "macs",
        "accuracy",
        "test_accuracy",
        "train_seconds",
        "backend",
        "noisy_accuracy",
        "energy_nj",
        "energy_breakdown_nj",
        "violations",
        "feasible",
    ):
        assert key in data
    assert 0.0 <= data["accuracy"] <= 1.0
    assert data["energy_nj"] == pytest.approx(sum(data["energy_breakdown_nj"].values()))


# (backend, override, the one line it must print): out of range, a quantiser with no levels, inf/NaN, overflow
BAD_VALUES = [
    (
        "mzi-realistic",
        "loss_db_per_mzi=1000",
        "error: backend 'mzi-realistic': loss_db_per_mzi: Input should be less than or equal to 10",
    ),
    (
        "mzi-realistic",
        "adc_bits=1",
        "error: backend 'mzi-realistic': adc_bits: Input should be greater than or equal to 2",
    ),
    (
        "mzi-realistic",
        "dac_bits=1",
        "error: backend 'mzi-realistic': dac_bits: Input should be greater than or equal to 2",
    ),
    (
        "mzi-realistic",
        "phase_noise_std=inf",
        "error: backend 'mzi-realistic': phase_noise_std: Input should be a finite number",
    ),
    ("mzi-realistic", "phase_shifter_p_pi_mw=1e308", "error: energy component 'phase_holding' is inf nJ"),
    (
        "gpu-b200-fp16",
        "energy_per_mac_pj=nan",
        "error: backend 'gpu-b200-fp16': energy_per_mac_pj: Input should be a finite number",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("evaluate", "examples/absent.json"), "error: examples/absent.json: no such file"),
        (("evaluate", "{bad}"), "error: {bad}: layer 0 (linear): input is 1x8x8 (not flat)"),
        (("evaluate", "{malformed}"), "invalid JSON at line 1"),
        (("evaluate", "examples/mlp_digits.json", "--dataset", "cifar"), "error: unknown dataset 'cifar'"),
        (("evaluate", "examples/mlp_digits.json", "--backend", "tpu"), "error: unknown backend 'tpu'"),
        (("evaluate", "examples/mlp_digits.json", "--backend", "ideal", "--set", "bogus=1"), "has no constant 'bogus'"),
        (("evaluate", "examples/mlp_digits.json", "--epochs", "abc"), "Invalid value for '--epochs'"),
        (("evaluate", "examples/mlp_digits.json", "--epochs", "0"), "Invalid value for '--epochs'"),
        (("arch", "check", "{bad}", "--dataset", "mnist"), "layer 0 (linear): input is 1x28x28"),
        *(
            (("evaluate", "examples/mlp_digits.json", "--backend", backend, "--set", override), message)
            for backend, override, message in BAD_VALUES
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": [{"type": "linear", "out_features": 10}]}')
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"layers": [')
    args = tuple(a.replace("{bad}", str(bad)).replace("{malformed}", str(malformed)) for a in args)
    message = message.replace("{bad}", str(bad))
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    if not message.startswith("Invalid value"):
        assert len(result.stderr.strip().splitlines()) == 1


def test_backends_lists_every_preset_as_json():
    data = json.loads(invoke("backends", "--json").stdout)
    names = {card["name"] for card in data["backends"]}
    assert {"ideal", "gpu-b200-fp16", "cpu-xeon8380-fp32"} <= names


def test_broken_plugin_reason_is_shown_verbatim(monkeypatch):
    reason = "nosuchmod:X: ModuleNotFoundError: No module named 'nosuchmod' [bold]"
    monkeypatch.setattr("uhnas.hardware.registry.broken_families", lambda: {"bad": reason})
    result = invoke("backends")
    assert result.exit_code == 0
    assert f"backend plugin 'bad' failed to load: {reason}" in " ".join(result.stdout.split())  # no emoji, no markup


def test_entry_point_runs_as_a_program():
    result = subprocess.run(
        [sys.executable, "-m", "uhnas", "arch", "check", "examples/mlp_digits.json", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["params"] == 4810


def test_the_front_table_is_readable_at_80_columns():
    from rich.console import Console

    from uhnas.cli import _front_table

    layers = "flatten | linear 512 | batchnorm | relu | dropout 0.2 | linear 256 | gelu | linear 10"
    row = {
        "trial": 123, "error": 0.0243, "accuracy_noisy_mean": 0.9757, "accuracy_noisy_p5": 0.9750,
        "accuracy_clean": 0.975, "energy_nj": 1817654.3, "params": 39434, "layers": layers,
    }  # fmt: skip
    console = Console(width=80, record=True, color_system=None)
    console.print(_front_table([row, {**row, "trial": 7, "layers": "linear [bold]10"}], "Pareto front"))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines if "123" in line or " 7 " in line]
    assert len(body) == 2  # one line per member: nothing wrapped
    assert "flatten | line" in body[0] and "…" in body[0]  # the layer sequence shortened, not folded
    assert "0.0243" in body[0] and "1.82e+06" in body[0] and "39,434" in body[0]
    assert "linear [bold]10" in body[1]  # model-written text is shown, never read as markup


def test_the_live_display_names_the_generation_being_proposed_and_shows_reasons_verbatim():
    from rich.console import Console

    from uhnas.records import TrialRecord
    from uhnas.report.live import LiveDisplay
    from uhnas.search.events import CandidateDone, GenerationProposing, RunStarted

    console = Console(width=100, record=True, color_system=None, force_terminal=False)
    with LiveDisplay(console) as display:
        display(RunStarted("nsga2", "out", 12, 0, 4, 2, 4, False, "ideal", "digits", 0, (1.0, 3.0)))
        display(GenerationProposing(1, 2, 4))
        assert display.state["generation"] == "1/2 (proposing 4)"
        failed = TrialRecord(generation=1, slot=0, state="FAIL", reason="[bold]shape[/bold] error")
        display(CandidateDone(failed, 1, 5, 12, 1.0, kind="candidate_failed"))
    assert "[bold]shape[/bold] error" in console.export_text()


def test_search_help_lists_the_installed_methods():
    from uhnas.search.methods import method_names

    result = invoke("search", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "installed:" in text
    assert set(method_names()) >= {"nsga2", "optuna-tpe", "uhnas"}
    for name in method_names():
        assert name in text
