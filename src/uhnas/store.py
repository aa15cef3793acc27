"""The run store: one search run is one Optuna study, so `optuna-dashboard sqlite:///<out>/study.db` shows it.

Every candidate the search considered is one trial, numbered by Optuna in the order it was stored:
COMPLETE with the objective values ("error", "energy_nj", both minimised) and the total constraint violation
as Optuna's constraint system attribute (so Optuna's samplers and ``study.best_trials`` see feasibility), or
FAIL with the reason (an invalid proposal, a crashed or timed-out evaluation) — never dropped. The
architecture, its hash, generation, slot, operator, parents and all measurements are trial user attributes.
Run metadata (resolved config, backend card, version, seed, hypervolume reference, per-generation log and the
hypervolume history) are study user attributes. The run directory always holds ``run.yaml`` (the resolved
config), which also says where the study lives when a shared SQLAlchemy URL is used instead of SQLite.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from optuna.trial import FrozenTrial, TrialState

from uhnas.errors import StoreError
from uhnas.records import TrialRecord, feasible_front, front_hypervolume, objective_accuracy

OBJECTIVE_NAMES = ("error", "energy_nj")
DIRECTIONS = ("minimize", "minimize")
DB_FILE = "study.db"
LLM_DB_FILE = "llm.db"  # the LLM call log of an LLM-guided run (uhnas.llm.cache)
RUN_FILE = "run.yaml"
CONSTRAINTS_ATTR = "constraints"  # Optuna's constraint system attribute (list form: read by Optuna and the dashboard)
FAIL_REASON_ATTR = "fail_reason"  # the system attribute Optuna itself uses for a failed trial's reason
GENERATION_PREFIX = "generation:"


def _finite(value: Any) -> float | None:
    """A float, or None for missing / non-finite values (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _user_attrs(record: TrialRecord) -> dict[str, Any]:
    """The trial user attributes: a few flat keys the dashboard shows well, the rest grouped (one row per key)."""
    ev = record.evaluation or {}
    noisy = ev.get("noisy_accuracy") or {}
    attrs: dict[str, Any] = {
        "generation": record.generation,
        "slot": record.slot,
        "operator": record.operator,
        "parents": list(record.parents),
        "hash": record.hash,
        "arch": record.arch,
        "accuracy_clean": ev.get("accuracy"),
        "accuracy_noisy_mean": noisy.get("mean"),
        "accuracy_noisy_p5": noisy.get("p5"),
        "energy_breakdown_nj": ev.get("energy_breakdown_nj"),
        "reason": record.reason,
        "candidate": {
            "attempt": record.attempt,
            "rejected": list(record.rejected),
            "rationale": record.rationale,
            "metadata": record.metadata,
            "seed": record.seed,
            "wall_seconds": round(record.wall_seconds, 4),
            "violation": record.violation,
        },
        "evaluation": record.evaluation,
    }
    return {key: _json_safe(value) for key, value in attrs.items() if value is not None}


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively, so attributes are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def record_to_trial(record: TrialRecord) -> FrozenTrial:
    """An Optuna trial for a record: COMPLETE with values and constraints, or FAIL with the reason."""
    system_attrs: dict[str, Any] = {}
    if record.failed:
        system_attrs[FAIL_REASON_ATTR] = record.reason or "failed"
        return optuna.trial.create_trial(
            state=TrialState.FAIL, user_attrs=_user_attrs(record), system_attrs=system_attrs
        )
    system_attrs[CONSTRAINTS_ATTR] = [float(record.violation)]
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        values=[float(record.error), float(record.energy_nj)],  # type: ignore[arg-type]
        user_attrs=_user_attrs(record),
        system_attrs=system_attrs,
    )


def trial_to_record(trial: FrozenTrial) -> TrialRecord:
    """The record a stored trial describes (inverse of `record_to_trial`)."""
    a = trial.user_attrs
    c = a.get("candidate") or {}
    complete = trial.state == TrialState.COMPLETE and trial.values is not None
    constraints = list(trial.constraints.values())
    return TrialRecord(
        generation=int(a.get("generation", -1)),
        slot=int(a.get("slot", -1)),
        state="COMPLETE" if complete else "FAIL",
        number=trial.number,
        operator=a.get("operator"),
        parents=tuple(a.get("parents") or ()),
        rationale=c.get("rationale"),
        metadata=dict(c.get("metadata") or {}),
        arch=a.get("arch"),
        hash=a.get("hash"),
        attempt=int(c.get("attempt", 0)),
        rejected=list(c.get("rejected") or []),
        error=float(trial.values[0]) if complete else None,
        energy_nj=float(trial.values[1]) if complete else None,
        violation=float(sum(max(0.0, v) for v in constraints)) if constraints else float(c.get("violation") or 0.0),
        evaluation=a.get("evaluation"),
        reason=a.get("reason") or trial.system_attrs.get(FAIL_REASON_ATTR),
        wall_seconds=float(c.get("wall_seconds") or 0.0),
        seed=int(c.get("seed", 0)),
    )


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands: trials stored against the budget, failures, last finished generation, hypervolume."""

    method: str
    trials: int
    budget: int
    completed: int
    failed: int
    feasible: int
    generation: int  # last finished generation (-1: none yet; 0 is the initial population)
    generations: int  # generations in the budget (after the initial population)
    hypervolume: float
    front_size: int
    finished: bool
    llm: dict[str, Any] | None = None  # LLM accounting (uhnas.llm.accounting) of a run with an llm.db, else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logs and experimental-API warnings inside the library (no printing)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def sqlite_url(out: str | Path) -> str:
    """The default storage URL of a run directory."""
    return f"sqlite:///{Path(out).resolve() / DB_FILE}"


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL journal (the dashboard reads while the search writes) and fsync at checkpoints only (faster commits)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for a SQLAlchemy URL (SQLite: WAL, and waits on a locked database instead of failing)."""
    sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {}
    try:
        with _quiet_optuna():
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as error:  # SQLAlchemy / alembic raise many kinds; the CLI needs one line
        raise StoreError(f"cannot open storage {url}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # pooled connections were opened before the listener: reconnect with the pragmas
    return storage


def _write_run_file(out: Path, url: str, study_name: str, config: dict[str, Any]) -> None:
    """run.yaml: where the study lives (storage URL, study name) and the resolved config. The run directory's own
    study.db is recorded as null ("this directory"), not as an absolute path, so that a copied or moved run (or
    study) directory opens its own database instead of the original's."""
    local = url == sqlite_url(out)
    run_file = {"storage": None if local else url, "study_name": study_name, "config": config}
    (out / RUN_FILE).write_text(yaml.safe_dump(run_file, sort_keys=False), encoding="utf-8")


class RunStore:
    """A search run's trials and metadata in an Optuna study (see module docstring)."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, out: Path, url: str) -> None:
        self.study = study
        self.out = out
        self.url = url
        self._storage = storage
        self._study_id = self._storage.get_study_id_from_name(study.study_name)

    @classmethod
    def create(
        cls, out: str | Path, config: dict[str, Any], *, storage: str | None = None, study_name: str | None = None
    ) -> RunStore:
        """Create the run directory, write run.yaml and create the study with objective names and directions."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        url = storage or sqlite_url(out)
        name = study_name or out.resolve().name
        _write_run_file(out, url, name, config)
        rdb = _storage(url)
        try:
            with _quiet_optuna():
                study = optuna.create_study(storage=rdb, study_name=name, directions=list(DIRECTIONS))
                study.set_metric_names(list(OBJECTIVE_NAMES))
        except optuna.exceptions.DuplicatedStudyError:
            raise StoreError(
                f"storage {url} already has a study named {name!r}; resume it or choose another study_name"
            ) from None
        store = cls(study, rdb, out, url)
        store.set("config", config)
        return store

    @classmethod
    def open(cls, out: str | Path) -> RunStore:
        """Open an existing run directory (reads run.yaml to find the storage and study)."""
        out = Path(out)
        run_file = out / RUN_FILE
        if not run_file.exists():
            raise StoreError(f"{out}: not a uhnas run directory (no {RUN_FILE})")
        info = yaml.safe_load(run_file.read_text(encoding="utf-8")) or {}
        url, name = info.get("storage") or sqlite_url(out), info.get("study_name") or out.resolve().name
        rdb = _storage(url)
        try:
            with _quiet_optuna():
                study = optuna.load_study(study_name=name, storage=rdb)
        except KeyError:
            raise StoreError(f"{out}: study {name!r} not found in {url}") from None
        return cls(study, rdb, out, url)

    def write_run_file(self, config: dict[str, Any]) -> None:
        """Rewrite run.yaml with the current resolved config (e.g. after a resume that grew the budget)."""
        _write_run_file(self.out, self.url, self.study.study_name, config)

    @staticmethod
    def exists(out: str | Path) -> bool:
        """True when `out` holds a run (run.yaml written by `create`)."""
        return (Path(out) / RUN_FILE).exists()

    def add(self, record: TrialRecord) -> TrialRecord:
        """Store a record as one trial; sets and returns it with its Optuna trial number."""
        trial_id = self._storage.create_new_trial(self._study_id, template_trial=record_to_trial(record))
        record.number = self._storage.get_trial_number_from_id(trial_id)
        return record

    def records(self) -> list[TrialRecord]:
        """Every stored record, in trial-number order."""
        trials = self._storage.get_all_trials(self._study_id, deepcopy=False)
        return [trial_to_record(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]

    def metadata(self) -> dict[str, Any]:
        """The study user attributes (config, backend card, version, seed, hv_reference, hv_history, ...)."""
        return dict(self._storage.get_study_user_attrs(self._study_id))

    def set(self, key: str, value: Any) -> None:
        """Set one run metadata entry (a study user attribute)."""
        self._storage.set_study_user_attr(self._study_id, key, _json_safe(value))

    def set_generation(self, generation: int, entry: dict[str, Any]) -> None:
        """Record what a finished generation left: population trial numbers, hypervolume, front size, timings."""
        self.set(f"{GENERATION_PREFIX}{generation:05d}", entry)

    def generation_log(self, metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Finished generations' entries, in order."""
        meta = self.metadata() if metadata is None else metadata
        keys = sorted(k for k in meta if k.startswith(GENERATION_PREFIX))
        return [meta[k] for k in keys]

    def population(self) -> list[TrialRecord]:
        """The population after the last finished generation (empty before the first one)."""
        log = self.generation_log()
        if not log:
            return []
        by_number = {r.number: r for r in self.records()}
        return [by_number[n] for n in log[-1].get("population", []) if n in by_number]

    def front(self) -> list[TrialRecord]:
        """The feasible Pareto front over every evaluated candidate so far."""
        return feasible_front(self.records())

    def llm_accounting(
        self, records: list[TrialRecord] | None = None, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """What the run's language model did (calls, tokens, cost, answers by verdict, LLM share of the proposals
        and of the front; `uhnas.llm.accounting`), or None for a run without an LLM call log."""
        from uhnas.llm.accounting import llm_accounting

        records = self.records() if records is None else records
        meta = self.metadata() if metadata is None else metadata
        llm = (meta.get("config") or {}).get("llm") or {}
        prices = llm.get("price_prompt_usd_per_mtok"), llm.get("price_completion_usd_per_mtok")
        price = (float(prices[0]), float(prices[1])) if None not in prices else None
        front = feasible_front(records)
        return llm_accounting(self.out / LLM_DB_FILE, [r.operator for r in records], [r.operator for r in front],
                              price=price)  # fmt: skip

    def status(self) -> RunStatus:
        """Trials done against the budget, failures, last finished generation, current hypervolume and, for an
        LLM-guided run, its LLM accounting."""
        meta = self.metadata()
        records = self.records()
        config = meta.get("config", {})
        log = self.generation_log(meta)
        reference = (meta.get("hv_reference") or {}).get("point")
        budget = int(meta.get("budget", 0))
        return RunStatus(
            method=str(config.get("method", "")),
            trials=len(records),
            budget=budget,
            completed=sum(not r.failed for r in records),
            failed=sum(r.failed for r in records),
            feasible=sum(r.feasible for r in records),
            generation=int(log[-1]["generation"]) if log else -1,
            generations=int(config.get("generations", 0)),
            hypervolume=front_hypervolume(records, reference) if reference else 0.0,
            front_size=len(feasible_front(records)),
            finished=bool(meta.get("finished", False)) and len(records) >= budget,
            llm=self.llm_accounting(records, meta),
        )


def open_run(out: str | Path) -> RunStore:
    """Open a run directory for reading (status, trials, population, front, metadata)."""
    return RunStore.open(out)


__all__ = [
    "DB_FILE",
    "DIRECTIONS",
    "OBJECTIVE_NAMES",
    "RUN_FILE",
    "RunStatus",
    "RunStore",
    "StoreError",
    "TrialRecord",
    "feasible_front",
    "front_hypervolume",
    "objective_accuracy",
    "open_run",
    "record_to_trial",
    "trial_to_record",
]
