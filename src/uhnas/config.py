"""Run configuration: a YAML file validated into pydantic models, with CLI-style `key.path=value` overrides on top.

Every model forbids unknown keys, so a typo fails at load time with one line naming the key path and the file
(``run.yaml: training.epochz: unknown key``) instead of silently running the default. Sections are sub-models,
so a later section (e.g. ``llm:`` for the LLM-guided methods) is one new field on `RunConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uhnas.errors import ConfigError

Objective = Literal["mean", "clean", "p5"]
ExecutorKind = Literal["process", "inline", "ray"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingHyperparameters(_Section):
    """How a network is trained: the one definition of these settings, their defaults and their limits."""

    epochs: int = Field(default=20, ge=1, strict=True)  # strict: true/false are not counts
    batch_size: int = Field(default=64, ge=1, strict=True)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)  # Adam learning rate
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # Adam weight decay


class TrainingConfig(TrainingHyperparameters):
    """How every candidate of a run is trained (shared by all candidates, so comparisons are fair)."""

    noise_aware: bool = False  # sample the backend's non-idealities in every training forward pass


class ExecutorConfig(_Section):
    """Where evaluations run: worker processes with hard timeouts (default), in-process, or a Ray cluster."""

    kind: ExecutorKind = "process"
    workers: int | None = Field(default=None, ge=1)  # None = one per CPU core
    timeout_s: float | None = Field(default=900.0, gt=0)  # per candidate; None = no limit
    memory_limit_mb: int | None = Field(default=None, ge=0)  # per worker; None = the executor's default, 0 = none
    ray_address: str | None = None  # e.g. "ray://head:10001"; None starts or joins a local Ray
    num_cpus: float = Field(default=1.0, gt=0)  # Ray resources per candidate
    num_gpus: float = Field(default=0.0, ge=0)
    max_identical_failures: int | None = Field(default=8, ge=1)  # stop after this many identical failures in a row


class EvolutionConfig(_Section):
    """Knobs of the evolutionary methods (nsga2, regevo and the LLM methods built on the same loop)."""

    crossover_prob: float = Field(default=0.9, ge=0, le=1)  # NSGA-II: share of offspring made by crossover
    max_attempts: int = Field(default=10, ge=1)  # proposals per slot before the slot is recorded as failed
    regevo_sample_size: int | None = Field(default=None, ge=2)  # regevo tournament size; None = max(2, population // 4)
    regevo_energy_weight: float = Field(
        default=0.1, ge=0
    )  # regevo scalarisation: error + weight * log10(energy / reference)


class LLMSection(_Section):
    """The language model behind LLM-guided methods (uhnas, llmatic, genius); the one definition of its settings.

    The client's settings are derived from it (`uhnas.llm.client.LLMConfig.from_section`), with no defaults
    of their own.

    `provider` is "openai" (any OpenAI-compatible chat-completions server at `base_url`) or
    "replay:<run dir>" (answers only from that run's llm.db, no network). The API key is never stored:
    only the *name* of the environment variable holding it.
    """

    provider: str = "openai"
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=1024, ge=16)  # answer length cap: an architecture answer needs ~100-400
    seed: int | None = None  # sent to the server; None = derived from the run seed
    timeout_s: float = Field(default=120.0, gt=0)  # per call; CPU servers beside other work need minutes
    max_retries: int = Field(default=6, ge=0)
    structured_output: Literal["auto", "json_schema", "json_object", "off"] = "auto"
    price_prompt_usd_per_mtok: float | None = Field(default=None, ge=0)
    price_completion_usd_per_mtok: float | None = Field(default=None, ge=0)
    budget_tokens: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, gt=0)
    system_prompt: Literal["hardware-aware", "generic", "minimal"] = "hardware-aware"
    max_repairs: int = Field(default=2, ge=0)  # repair turns after an invalid answer, per proposal
    max_calls_per_slot: int = Field(default=6, ge=1)  # LLM calls one slot may cost before the fallback fills it
    fallback_after: int = Field(default=2, ge=1)  # failed slots in a row before later slots get one probe call only
    init_failures_before_fallback: int | None = Field(default=None, ge=1)  # deprecated alias of fallback_after
    autofix: bool = True  # insert a missing flatten / append or resize the classifier (verdict "autofixed")
    steering: Literal["energy", "none"] = "energy"  # name a sparse energy band of the front as each child's target
    shared_cache: str | None = None  # optional extra SQLite cache shared between runs

    @field_validator("steering", mode="before")
    @classmethod
    def _steering(cls, value: Any) -> Any:
        """YAML reads `off` / `false` as False: that means no steering."""
        return "none" if value is False or value == "off" else value

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if value != "openai" and not (value.startswith("replay:") and len(value) > len("replay:")):
            raise ValueError("must be 'openai' or 'replay:<run dir>'")
        return value

    @model_validator(mode="after")
    def _prices(self) -> LLMSection:
        """Both prices or neither; a USD budget needs them (checked when the config loads, not at the first call)."""
        prompt, completion = self.price_prompt_usd_per_mtok, self.price_completion_usd_per_mtok
        if (prompt is None) != (completion is None):
            raise ValueError("set both price_prompt_usd_per_mtok and price_completion_usd_per_mtok, or neither")
        if self.budget_usd is not None and prompt is None:
            raise ValueError("budget_usd needs price_prompt_usd_per_mtok and price_completion_usd_per_mtok")
        return self


class RunConfig(_Section):
    """One search run: what to search on, how candidates are evaluated, and the budget."""

    method: str = "nsga2"
    dataset: str = "digits"
    data_dir: str | None = None
    backend: str = "mzi-realistic"  # preset name or path to a preset YAML
    backend_overrides: list[str] = Field(default_factory=list)  # "constant=value", applied to the preset
    seed: int = Field(default=0, ge=0, lt=2**63)
    population: int = Field(default=20, ge=2)
    generations: int = Field(default=30, ge=0)
    offspring: int = Field(default=8, ge=1)
    objective: Objective = "mean"  # which accuracy the error objective uses: noisy mean, clean, or noisy 5th percentile
    mc: int = Field(default=32, ge=0)  # Monte-Carlo draws of the device's non-idealities per candidate
    device: str = "cpu"  # torch device of the evaluations ("cpu", "cuda", "auto")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    storage: str | None = None  # SQLAlchemy URL of a shared Optuna storage; None = sqlite:///<out>/study.db
    study_name: str | None = None  # Optuna study name; None = the run directory's name
    llm: LLMSection | None = None  # the language model of LLM-guided methods; None for conventional ones

    @property
    def budget(self) -> int:
        """Evaluations of the whole run: the initial population plus every generation's offspring."""
        return self.population + self.generations * self.offspring

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict with every default explicit."""
        return self.model_dump(mode="json")


def _location(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a dotted key path (list items as their index)."""
    return ".".join(str(part) for part in loc) or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    """A short message for one pydantic error."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "literal_error":
        return f"{error['msg'].lower()}, got {error.get('input')!r}"
    return f"{error['msg']}, got {error.get('input')!r}" if not isinstance(error.get("input"), dict) else error["msg"]


def config_from_dict(data: Any, source: str = "config") -> RunConfig:
    """Validate a decoded mapping as a RunConfig; raise ConfigError naming `source` and the first bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        first = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {_location(tuple(first['loc']))}: {_message(first)}{more}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.epochs=5' -> (['training', 'epochs'], 5); the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` set (sections are created as needed)."""
    result: dict[str, Any] = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: depth + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    """Copy nested dicts (lists and scalars are replaced wholesale by overrides, so they are shared)."""
    return {key: _deep_copy(value) if isinstance(value, dict) else value for key, value in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file; ConfigError with one line when it is missing or malformed."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of keys to values, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a run configuration from YAML (None = all defaults) and apply `key.path=value` overrides."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with overrides)"
    return config_from_dict(data, source)


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved configuration (every default explicit) as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ between two config dicts (recursing into sections)."""
    keys = sorted(set(old) | set(new))
    diffs: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(config_differences(a, b, path + "."))
        elif a != b:
            diffs.append(path)
    return diffs


__all__ = [
    "ConfigError",
    "EvolutionConfig",
    "ExecutorConfig",
    "Objective",
    "RunConfig",
    "TrainingConfig",
    "TrainingHyperparameters",
    "apply_overrides",
    "config_differences",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml",
]
