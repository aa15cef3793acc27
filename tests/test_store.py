"""The run store: records round-trip through Optuna trials; the study is what optuna-dashboard expects."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from uhnas.store import (
    DB_FILE,
    RUN_FILE,
    RunStore,
    StoreError,
    TrialRecord,
    feasible_front,
    front_hypervolume,
    open_run,
)

ARCH = {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10, "bias": True}]}


def evaluated(slot: int, error: float, energy: float, violation: float = 0.0, generation: int = 0) -> TrialRecord:
    evaluation = {
        "accuracy": 1 - error + 0.02,
        "noisy_accuracy": {"mean": 1 - error, "std": 0.01, "p5": 1 - error - 0.03, "draws": 4},
        "energy_nj": energy,
        "energy_breakdown_nj": {"laser": energy / 2, "adc": energy / 2},
        "violations": [
            {"constraint": "mesh", "limit": 1, "actual": 1 + violation, "unit": "ports", "amount": violation}
        ]
        if violation
        else [],
        "total_violation": violation,
        "train_seconds": 0.5,
        "mc_seconds": 0.1,
    }
    return TrialRecord(
        generation=generation,
        slot=slot,
        operator="random.mutate",
        parents=(0,),
        rationale="why",
        metadata={"mutations": ["change_width"]},
        arch=ARCH,
        hash=f"h{generation}-{slot}",
        attempt=1,
        rejected=["duplicate"],
        error=error,
        energy_nj=energy,
        violation=violation,
        evaluation=evaluation,
        wall_seconds=1.5,
        seed=3,
    )


def test_records_round_trip_and_failures_are_kept(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", {"seed": 3})
    records = [
        evaluated(0, 0.10, 50.0),
        evaluated(1, 0.05, 100.0, violation=0.5),
        TrialRecord(generation=0, slot=2, state="FAIL", arch=ARCH, hash="h0-2", reason="timed out after 3 s", seed=3),
        TrialRecord(
            generation=0,
            slot=3,
            state="FAIL",
            reason="no valid new architecture after 10 attempts",
            rejected=["a", "b"],
        ),
    ]
    for r in records:
        store.add(r)
    assert [r.number for r in records] == [0, 1, 2, 3]
    loaded = open_run(tmp_path / "run").records()
    for original, back in zip(records, loaded):
        assert back.to_dict() == original.to_dict()
    assert [r.failed for r in loaded] == [False, False, True, True]
    assert loaded[1].feasible is False and loaded[0].feasible is True
    assert loaded[0].accuracy("clean") == pytest.approx(0.92) and loaded[0].accuracy("p5") == pytest.approx(0.87)


def test_study_is_dashboard_compatible(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", {})
    for r in [
        evaluated(0, 0.10, 50.0),
        evaluated(1, 0.20, 10.0),
        evaluated(2, 0.30, 60.0),
        evaluated(3, 0.01, 1.0, violation=2.0),
    ]:
        store.add(r)
    store.add(TrialRecord(generation=0, slot=4, state="FAIL", reason="boom"))
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'run' / DB_FILE}")
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert study.metric_names == ["error", "energy_nj"]
    assert sorted(t.number for t in study.best_trials) == sorted(r.number for r in store.front()) == [0, 1]
    trials = study.get_trials()
    assert trials[3].constraints == {"0": 2.0}
    assert trials[4].state == optuna.trial.TrialState.FAIL and trials[4].system_attrs["fail_reason"] == "boom"
    assert {
        "generation",
        "slot",
        "operator",
        "parents",
        "hash",
        "arch",
        "accuracy_clean",
        "accuracy_noisy_mean",
        "accuracy_noisy_p5",
        "energy_breakdown_nj",
        "candidate",
        "evaluation",
    } <= set(trials[0].user_attrs)


def test_metadata_population_and_status(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", {"method": "nsga2", "generations": 2})
    store.set("budget", 4)
    store.set("hv_reference", {"point": [1.0, 3.0]})
    first, second = store.add(evaluated(0, 0.1, 50.0)), store.add(evaluated(1, 0.2, 10.0))
    store.add(TrialRecord(generation=1, slot=0, state="FAIL", reason="x"))
    store.set_generation(0, {"generation": 0, "population": [second.number, first.number], "hypervolume": 1.0})
    assert [r.number for r in store.population()] == [1, 0]
    status = store.status()
    assert (status.trials, status.budget, status.completed, status.failed, status.generation) == (3, 4, 2, 1, 0)
    assert status.front_size == 2 and not status.finished and status.method == "nsga2"
    assert (
        status.hypervolume == pytest.approx(front_hypervolume(store.records(), [1.0, 3.0])) and status.hypervolume > 0
    )
    assert store.metadata()["hv_reference"] == {"point": [1.0, 3.0]}
    assert store.generation_log()[0]["hypervolume"] == 1.0


def test_front_excludes_infeasible_and_failed() -> None:
    records = [
        evaluated(0, 0.1, 50.0),
        evaluated(1, 0.05, 5.0, violation=1.0),
        TrialRecord(generation=0, slot=2, state="FAIL"),
    ]
    assert [r.slot for r in feasible_front(records)] == [0]
    assert feasible_front([]) == []


def test_open_errors_and_shared_storage(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a uhnas run directory"):
        open_run(tmp_path)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = RunStore.create(tmp_path / "a", {"x": 1}, storage=url, study_name="exp-a")
    store.add(evaluated(0, 0.1, 5.0))
    assert (tmp_path / "a" / RUN_FILE).exists() and not (tmp_path / "a" / DB_FILE).exists()
    assert len(open_run(tmp_path / "a").records()) == 1
    with pytest.raises(StoreError, match="already has a study named 'exp-a'"):
        RunStore.create(tmp_path / "b", {}, storage=url, study_name="exp-a")


def test_a_copied_run_directory_opens_its_own_database(tmp_path: Path) -> None:
    """run.yaml records the run's own study.db as null ("this directory"): a copy is independent of the original."""
    import shutil

    original = RunStore.create(tmp_path / "a", {"x": 1})
    original.set("note", "original")
    assert "storage: null" in (tmp_path / "a" / "run.yaml").read_text()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = RunStore.open(tmp_path / "b")
    copy.set("note", "copy")
    assert RunStore.open(tmp_path / "a").metadata()["note"] == "original"
    assert RunStore.open(tmp_path / "b").metadata()["note"] == "copy"
