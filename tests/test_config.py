"""Run configuration: YAML loading, one-line errors naming the key and the file, CLI-style overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from uhnas.config import ConfigError, RunConfig, config_differences, dump_config, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["digits_mzi.yaml", "digits_gpu.yaml"])
def test_examples_load_with_the_paper_budget(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert (config.population, config.generations, config.offspring) == (20, 30, 8)
    assert config.budget == 20 + 30 * 8
    assert config.dataset == "digits"


def test_defaults_and_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "method: random\nseed: 3\ntraining:\n  epochs: 2\n"))
    assert config.method == "random" and config.seed == 3
    assert config.training.epochs == 2 and config.training.batch_size == 64
    assert config.objective == "mean" and config.mc == 32
    assert config.executor.kind == "process" and config.executor.workers is None
    assert load_config(None) == RunConfig()


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == RunConfig()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("trainin:\n  epochs: 3\n", "trainin"),
        ("training:\n  epochz: 3\n", "training.epochz"),
        ("training:\n  epochs: many\n", "training.epochs"),
        ("population: 1\n", "population"),
        ("objective: median\n", "objective"),
        ("executor:\n  kind: slurm\n", "executor.kind"),
        ("backend_overrides: [ok=1, {a: 2}]\n", "backend_overrides.1"),
    ],
)
def test_bad_key_type_or_value_is_one_line_naming_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}:")


def test_unreadable_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(write(tmp_path, "seed: [1\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "population: 10\ntraining:\n  epochs: 5\n")
    config = load_config(
        path,
        [
            "population=6",
            "training.lr=0.01",
            "executor.kind=inline",
            "backend_overrides=[a=1]",
            "executor.workers=null",
        ],
    )
    assert config.population == 6 and config.training.lr == 0.01 and config.training.epochs == 5
    assert config.executor.kind == "inline" and config.executor.workers is None
    assert config.backend_overrides == ["a=1"]


def test_bad_override_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match=r"\(with overrides\): training\.epochz: unknown key"):
        load_config(path, ["training.epochz=3"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["population"])
    with pytest.raises(ConfigError, match="seed is not a section"):
        load_config(path, ["seed.x=1"])


def test_dump_round_trip_and_differences(tmp_path: Path) -> None:
    config = load_config(None, ["seed=7", "training.epochs=3"])
    dump_config(config, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == config
    other = load_config(None, ["seed=8", "training.epochs=3", "executor.workers=2"])
    assert config_differences(config.to_dict(), other.to_dict()) == ["executor.workers", "seed"]
