"""Study files: validation with one-line errors naming file and key path, grid expansion into cells."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from uhnas.cli import app
from uhnas.errors import ConfigError
from uhnas.study import expand, load_study

GOOD = """\
name: t
base: {dataset: digits, population: 4, generations: 1, offspring: 2, mc: 2, training: {epochs: 1}}
grid:
  backend: [ideal, {preset: mzi-realistic, overrides: [phase_noise_std=0.05], label: mzi-noisy}]
  method: [nsga2, random]
  seed: 2
exclude: [{method: random, backend: mzi-noisy}]
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_grid_expands_into_cells_with_stable_ids(tmp_path: Path):
    spec, _ = load_study(write(tmp_path, GOOD))
    cells = expand(spec, "t")
    assert [c.id for c in cells] == [
        "ideal_nsga2_s0",
        "ideal_nsga2_s1",
        "ideal_random_s0",
        "ideal_random_s1",
        "mzi-noisy_nsga2_s0",
        "mzi-noisy_nsga2_s1",
    ]
    noisy = cells[-1]
    assert noisy.config.backend == "mzi-realistic" and noisy.config.backend_overrides == ["phase_noise_std=0.05"]
    assert noisy.axes["backend"] == "mzi-noisy" and noisy.config.seed == 1 and noisy.config.population == 4
    assert noisy.varied == ("backend", "method", "seed")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("  method:", "  methd:"), "grid.methd: unknown key"),
        (GOOD.replace("mc: 2,", "mc: 2, trainin: {},"), "base.trainin: unknown key"),
        (GOOD.replace("training: {epochs: 1}", "training: {epochz: 1}"), "base.training.epochz: unknown key"),
        (GOOD.replace("name: t", "nme: t"), "nme: unknown key"),
        (GOOD.replace("label: mzi-noisy", "lable: mzi-noisy"), "grid.backend.1.lable: unknown key"),
        (GOOD.replace("{method: random,", "{methodx: random,"), "exclude.0.methodx: unknown axis"),
        (GOOD.replace("seed: 2", "seed: [0, 0]"), "grid.seed: Value error, lists a value twice"),
    ],
)
def test_a_wrong_key_is_one_line_naming_file_and_key_path(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_study(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_the_cli_prints_a_bad_key_as_one_line(tmp_path: Path):
    path = write(tmp_path, GOOD.replace("  method:", "  methd:"))
    result = CliRunner().invoke(app, ["study", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {path}: grid.methd: unknown key"
    assert not (tmp_path / "out").exists()


def test_an_invalid_cell_is_a_cell_error_not_a_file_error(tmp_path: Path):
    text = GOOD.replace("  seed: 2", "  seed: 2\n  llm.system_prompt: [generic, minimal]")
    spec, _ = load_study(write(tmp_path, text))
    cells = expand(spec, "t")
    assert cells and all(c.config is None for c in cells)  # no llm: section in the base: every cell is invalid
    assert "llm.model" in cells[0].error and "cell ideal_nsga2_prompt-generic_s0" in cells[0].error


def test_overrides_set_base_keys_and_axes(tmp_path: Path):
    path = write(tmp_path, GOOD)
    spec, document = load_study(path, ["training.epochs=3", "grid.seed=[5]", "grid.method=[nsga2]"])
    cells = expand(spec, "t")
    assert [c.id for c in cells] == ["ideal_nsga2_s5", "mzi-noisy_nsga2_s5"]
    assert cells[0].config.training.epochs == 3 and document["base"]["training"]["epochs"] == 3


def test_shipped_studies_validate():
    for path in sorted(Path("examples/studies").glob("*.yaml")):
        spec, _ = load_study(path)
        cells = expand(spec, path.stem)
        assert cells, path
        if path.stem != "prompt_ablation":
            assert all(c.config is not None for c in cells), (path, [c.error for c in cells if c.error])
