"""The generational engine: budget, dedup, store contents, every method, failures, resume rules, events."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from uhnas.arch import analyze, arch_hash, parse_architecture_json
from uhnas.config import RunConfig, load_config
from uhnas.data import dataset_spec
from uhnas.errors import BackendError, MethodError, SearchError
from uhnas.evaluate import Evaluation, NoisyAccuracy
from uhnas.hardware.card import total_violation
from uhnas.hardware.registry import load_backend
from uhnas.search.engine import JOB_ID_STRIDE, run_search
from uhnas.search.events import event_to_dict
from uhnas.search.jobs import InlineExecutor, Job, JobResult, ResultCallback
from uhnas.search.methods import MethodSetup, method_names, register_method, unregister_method
from uhnas.search.operators.base import OperatorContext, Proposal
from uhnas.search.operators.random import RandomOperator
from uhnas.search.reference import hv_reference
from uhnas.seeding import numpy_rng
from uhnas.store import TrialRecord, open_run

TINY = [
    "backend=ideal",
    "population=4",
    "generations=2",
    "offspring=2",
    "training.epochs=1",
    "mc=2",
    "executor.kind=inline",
]


def tiny(*overrides: str) -> RunConfig:
    return load_config(None, [*TINY, *overrides])


# ---------------------------------------------------------------------- a fast, deterministic stand-in evaluation


@lru_cache(maxsize=8)
def _backend(spec: str) -> Any:
    return load_backend(spec)


def synthetic_job(job: Job) -> JobResult:
    """Score a job without training: accuracy grows with parameters (plus a hash-derived wobble), energy is real."""
    s = job.settings
    arch = parse_architecture_json(job.arch_json)
    shape, classes = dataset_spec(s.dataset)
    summary = analyze(arch, shape, classes)
    backend = _backend(s.backend)
    key = arch_hash(arch)
    wobble = int(key[:8], 16) / 16**8
    accuracy = 0.3 + 0.65 * (1 - math.exp(-summary.params / 4000)) * (0.85 + 0.15 * wobble)
    report = backend.energy(summary)
    violations = backend.check(summary)
    evaluation = Evaluation(
        arch_hash=key,
        backend=backend.name,
        dataset=s.dataset,
        params=summary.params,
        macs=summary.macs,
        accuracy=accuracy,
        test_accuracy=accuracy,
        noisy_accuracy=NoisyAccuracy(accuracy - 0.01, 0.005, accuracy - 0.02, s.mc),
        energy_nj=report.total_nj,
        energy_breakdown_nj=dict(report.breakdown_nj),
        violations=[v.to_dict() for v in violations],
        total_violation=total_violation(violations),
        epochs=s.training.epochs,
        seed=s.seed,
    )
    return JobResult(job.job_id, evaluation.to_dict(), False, None, 0.001)


def misbehaving_job(job: Job) -> JobResult:
    """Generation 1: slot 0 sleeps past any test timeout, slot 1 raises; everything else is synthetic."""
    generation, slot = divmod(job.job_id, JOB_ID_STRIDE)
    if (generation, slot) == (1, 0):
        time.sleep(120)
    if (generation, slot) == (1, 1):
        raise RuntimeError("candidate exploded")
    return synthetic_job(job)


def SyntheticExecutor() -> InlineExecutor:  # noqa: N802 - reads like the class it stands for
    """A serial executor running `synthetic_job` instead of training."""
    return InlineExecutor(job_fn=synthetic_job)


def trial_set(out: Path) -> set[tuple[Any, ...]]:
    """What must match between two runs: (hash, generation, slot, objectives, state) of every trial."""
    return {(r.hash, r.generation, r.slot, r.error, r.energy_nj, r.state) for r in open_run(out).records()}


def check_complete(out: Path, config: RunConfig) -> list[TrialRecord]:
    """Budget met, one trial per (generation, slot), no architecture evaluated twice."""
    records = open_run(out).records()
    assert len(records) == config.budget
    slots = sorted((r.generation, r.slot) for r in records)
    expected = [(0, s) for s in range(config.population)] + [
        (g, s) for g in range(1, config.generations + 1) for s in range(config.offspring)
    ]
    assert slots == expected
    hashes = [r.hash for r in records if r.hash is not None]
    assert len(hashes) == len(set(hashes))
    return records


# ----------------------------------------------------------------------------- tests


def test_short_nsga2_run_with_real_evaluations(tmp_path: Path) -> None:
    config = tiny()
    events: list[Any] = []
    result = run_search(config, tmp_path / "run", progress=events.append)
    records = check_complete(tmp_path / "run", config)
    assert all(not r.failed for r in records)
    assert all(r.evaluation and r.evaluation["epochs"] == 1 and r.arch and r.operator for r in records)
    assert {r.operator for r in records if r.generation == 0} == {"random.init"}
    assert {r.operator for r in records if r.generation > 0} <= {"random.mutate", "random.crossover"}
    assert all(r.parents for r in records if r.generation > 0)

    store = open_run(tmp_path / "run")
    meta = store.metadata()
    for key in ("config", "backend_card", "version", "seed", "hv_reference", "hv_history", "summary", "budget"):
        assert key in meta, key
    assert meta["finished"] is True and meta["config"]["population"] == 4
    assert [h["generation"] for h in meta["hv_history"]] == [0, 1, 2]
    hvs = [h["hypervolume"] for h in meta["hv_history"]]
    assert hvs == sorted(hvs) and hvs[-1] == pytest.approx(result.hypervolume) and hvs[-1] > 0
    summary = meta["summary"]
    assert summary["evaluations"] == 8 and {"diversity", "robustness", "front_size"} <= set(summary)
    assert len(store.population()) == 4 and store.status().finished

    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert study.metric_names == ["error", "energy_nj"]
    assert sorted(t.number for t in study.best_trials) == sorted(r.number for r in result.front)
    for trial in study.trials:
        assert {"arch", "hash", "generation", "slot", "operator", "accuracy_clean", "evaluation"} <= set(
            trial.user_attrs
        )

    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("generation_done") == 3 and kinds.count("candidate_evaluated") == 8
    # each generation announces its proposals before they are made, then its evaluations
    proposing = [e.generation for e in events if e.kind == "generation_proposing"]
    started = [e.generation for e in events if e.kind == "generation_started"]
    assert proposing == started == [0, 1, 2]
    assert kinds.index("generation_proposing") < kinds.index("generation_started")
    json.dumps([event_to_dict(e) for e in events])


LLM_METHODS = {"uhnas", "llmatic", "genius"}  # need a language model: covered in tests/test_llm_search.py


@pytest.mark.parametrize("method", sorted(set(method_names()) - LLM_METHODS))
def test_every_method_runs_a_tiny_budget(tmp_path: Path, method: str) -> None:
    config = tiny(f"method={method}", "offspring=3")
    executor = SyntheticExecutor()
    result = run_search(config, tmp_path / method, executor=executor)
    records = check_complete(tmp_path / method, config)
    assert executor.jobs == sum(r.arch is not None for r in records) == config.budget
    assert result.hypervolume > 0 and len(result.population) == config.population


def test_same_seed_same_choices_other_seed_other_choices(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_search(tiny(f"seed={seed}"), tmp_path / name, executor=SyntheticExecutor())
    assert trial_set(tmp_path / "a") == trial_set(tmp_path / "b") != trial_set(tmp_path / "c")


class Stubborn:
    """Proposes the same network every time: after the first slot every slot exhausts its attempts."""

    name = "stubborn"

    def __init__(self, setup: MethodSetup) -> None:
        self.operator = RandomOperator()
        self.setup = setup

    def propose(self, context: OperatorContext) -> Proposal:
        fixed = OperatorContext(**{**context.__dict__, "rng": numpy_rng(0)})
        return Proposal(self.operator.initialize(fixed).arch, "stubborn")

    def rejected(self, context: OperatorContext, proposal: Proposal | None, reason: str) -> None: ...

    def observe(self, records: Sequence[TrialRecord]) -> None: ...

    def survive(self, candidates: Sequence[TrialRecord], size: int) -> list[TrialRecord]:
        return list(candidates)[:size]

    def reflect(self, context: OperatorContext) -> dict[str, Any]:
        return {"seen": len(context.history)}


def test_known_architecture_is_never_trained_again_and_the_failure_is_recorded(tmp_path: Path) -> None:
    register_method("stubborn-test", Stubborn)
    try:
        config = tiny("method=stubborn-test", "evolution.max_attempts=3")
        executor = SyntheticExecutor()
        run_search(config, tmp_path / "run", executor=executor)
    finally:
        unregister_method("stubborn-test")
    records = check_complete(tmp_path / "run", config)
    assert executor.jobs == 1
    failed = [r for r in records if r.failed]
    assert len(failed) == config.budget - 1
    for r in failed:
        assert r.reason.startswith("no valid new architecture after 3 attempts") and len(r.rejected) == 3
        assert "duplicate of generation 0 slot 0" in r.rejected[0]
    log = open_run(tmp_path / "run").generation_log()
    assert [entry["notes"] for entry in log] == [{"seen": 4}, {"seen": 6}, {"seen": 8}]


def test_timeout_and_crash_are_recorded_as_failed_and_the_search_completes(tmp_path: Path) -> None:
    from uhnas.search.executor import ProcessExecutor

    config = tiny()
    with ProcessExecutor(workers=2, timeout_s=5, job_fn=misbehaving_job) as executor:
        result = run_search(config, tmp_path / "run", executor=executor)
    records = {(r.generation, r.slot): r for r in check_complete(tmp_path / "run", config)}
    assert records[1, 0].failed and "timed out after 5 s" in records[1, 0].reason
    assert records[1, 1].failed and records[1, 1].reason.startswith("RuntimeError: candidate exploded")
    assert sum(r.failed for r in records.values()) == 2
    assert all(not r.failed for r in result.population)
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) == 2


def test_resume_rules(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_search(tiny("generations=1"), out, executor=SyntheticExecutor())
    with pytest.raises(SearchError, match="already holds a run"):
        run_search(tiny("generations=1"), out, executor=SyntheticExecutor())
    with pytest.raises(SearchError, match=r"cannot resume with a different configuration: objective, seed differ"):
        run_search(tiny("generations=1", "seed=5", "objective=p5"), out, resume=True, executor=SyntheticExecutor())
    with pytest.raises(SearchError, match="generations differ"):
        run_search(tiny("generations=0"), out, resume=True, executor=SyntheticExecutor())
    executor = SyntheticExecutor()
    run_search(tiny("generations=3", "executor.workers=3"), out, resume=True, executor=executor)
    assert executor.jobs == 2 * 2  # only the two new generations are evaluated
    run_search(tiny("generations=3"), tmp_path / "straight", executor=SyntheticExecutor())
    assert trial_set(out) == trial_set(tmp_path / "straight")
    assert len(open_run(out).generation_log()) == 4


def test_resume_of_a_finished_run_evaluates_nothing(tmp_path: Path) -> None:
    run_search(tiny(), tmp_path / "run", executor=SyntheticExecutor())
    executor = SyntheticExecutor()
    events: list[Any] = []
    result = run_search(tiny(), tmp_path / "run", resume=True, executor=executor, progress=events.append)
    assert executor.jobs == 0 and len(result.records) == 8
    assert [e.kind for e in events] == ["run_started", "run_finished"]
    assert events[0].resumed and events[0].done == 8


def test_bad_method_or_backend_fails_before_creating_the_run(tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="unknown method 'nope'; installed: "):
        run_search(tiny("method=nope"), tmp_path / "a")
    with pytest.raises(BackendError, match="unknown backend"):
        run_search(tiny("backend=no-such-backend"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert "nsga2" in method_names()


@pytest.mark.parametrize(
    ("backend", "dataset"),
    [("ideal", "digits"), ("gpu-b200-fp16", "digits"), ("mzi-realistic", "digits"), ("mzi-worst", "mnist")],
)
def test_hv_reference_bounds_the_conventional_space(backend: str, dataset: str) -> None:
    hw = load_backend(backend)
    shape, classes = dataset_spec(dataset)
    ref = hv_reference(hw, shape, classes)
    assert ref["point"][0] == 1.0
    op = RandomOperator()
    base = OperatorContext(
        generation=0,
        slot=0,
        attempt=0,
        rng=numpy_rng(0),
        seed=0,
        dataset=dataset,
        input_shape=shape,
        num_classes=classes,
        backend=hw.describe(),
        objective="mean",
        population=(),
        front=(),
        recent=(),
        history=(),
        is_known=lambda h: False,
        generations=1,
        offspring=1,
        population_size=2,
    )
    energies = [
        hw.energy(analyze(op.initialize(base.with_attempt(0, i, numpy_rng(i), ())).arch, shape, classes)).total_nj
        for i in range(300)
    ]
    assert np.log10(max(energies)) < ref["point"][1]
    assert hv_reference(hw, shape, classes) == ref  # frozen: depends on backend and dataset only


class Killed(Exception):
    """Stands in for SIGKILL in-process: the executor dies after some results were stored."""


class DyingExecutor(InlineExecutor):
    """Runs `synthetic_job` until `after` jobs are done, then raises mid-generation."""

    def __init__(self, after: int) -> None:
        super().__init__(job_fn=synthetic_job)
        self.after = after

    def run(self, jobs: Sequence[Job], on_result: ResultCallback | None = None) -> list[JobResult]:
        for job in jobs:
            if self.jobs == self.after:
                raise Killed
            self.jobs += 1
            if on_result is not None:
                on_result(synthetic_job(job))
        return []


@pytest.mark.parametrize("method", sorted(set(method_names()) - LLM_METHODS))
def test_interrupted_mid_generation_resumes_like_an_uninterrupted_run(tmp_path: Path, method: str) -> None:
    config = tiny(f"method={method}", "generations=3", "offspring=3")
    with pytest.raises(Killed):
        run_search(config, tmp_path / "killed", executor=DyingExecutor(after=config.population + 4))
    assert len(open_run(tmp_path / "killed").records()) == config.population + 4
    executor = SyntheticExecutor()
    run_search(config, tmp_path / "killed", resume=True, executor=executor)
    assert executor.jobs == config.budget - config.population - 4
    run_search(config, tmp_path / "straight", executor=SyntheticExecutor())
    check_complete(tmp_path / "killed", config)
    assert trial_set(tmp_path / "killed") == trial_set(tmp_path / "straight")
