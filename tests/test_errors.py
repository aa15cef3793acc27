"""Errors that tell the truth: user errors are one line and exit 2, bugs keep their traceback and stop the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from uhnas.cli import app
from uhnas.config import RunConfig, load_config
from uhnas.errors import BackendError, DatasetError, ProposalError, SearchError, UhnasError
from uhnas.hardware.registry import load_backend
from uhnas.search.engine import JOB_ID_STRIDE, EvaluationBug, run_search
from uhnas.search.jobs import BUG, USER_ERROR, EvalSettings, InlineExecutor, Job, JobResult, run_job
from uhnas.search.methods import register_method
from uhnas.search.operators.base import OperatorContext, Proposal
from uhnas.search.operators.random import RandomOperator
from uhnas.store import open_run

runner = CliRunner()
MLP = '{"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 10}]}'


def tiny(*overrides: str) -> RunConfig:
    base = ["backend=ideal", "population=4", "generations=2", "offspring=2", "training.epochs=1", "mc=0"]
    return load_config(None, [*base, "executor.kind=inline", *overrides])


# ---------------------------------------------------------------------------------------------------------- CLI


def test_a_bug_in_a_command_prints_its_traceback_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("numpy said something")  # a ValueError is not a user error any more

    monkeypatch.setattr("uhnas.hardware.registry.available_backends", broken)
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: numpy said something" in result.stderr
    assert "internal error: this is a bug in uhnas" in result.stderr.strip().splitlines()[-1]


def test_a_user_error_is_one_line_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise DatasetError("mnist: no IDX files in /nowhere")

    monkeypatch.setattr("uhnas.hardware.registry.available_backends", refuse)
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: mnist: no IDX files in /nowhere"


def test_every_user_error_shares_one_base() -> None:
    from uhnas.config import ConfigError
    from uhnas.data import DatasetError as DataDatasetError
    from uhnas.hardware.registry import BackendError as RegistryBackendError
    from uhnas.llm.errors import LLMError
    from uhnas.store import StoreError

    for error in (
        ConfigError,
        DataDatasetError,
        RegistryBackendError,
        LLMError,
        StoreError,
        SearchError,
        ProposalError,
    ):
        assert issubclass(error, UhnasError)
        assert not issubclass(error, ValueError)  # a library's ValueError must not pass for a user error


def test_unknown_backend_names_a_broken_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "mypkg.hw:FAMILY: ModuleNotFoundError: No module named 'mypkg'"
    monkeypatch.setattr("uhnas.hardware.registry.broken_families", lambda: {"myhw": reason})
    with pytest.raises(BackendError) as caught:
        load_backend("myhw-default")
    message = str(caught.value)
    assert message.startswith("unknown backend 'myhw-default'; installed: ")
    assert message.endswith(f"; plugins that failed to load: myhw ({reason})")


# ------------------------------------------------------------------------------------- evaluation failures


def _settings(*overrides: str) -> EvalSettings:
    return EvalSettings.from_config(load_config(None, ["backend=ideal", "training.epochs=1", "mc=0", *overrides]))


def test_run_job_classifies_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    bad_setup = run_job(Job(1, MLP, _settings("backend=no-such-backend")))
    assert bad_setup.failed and bad_setup.details["kind"] == USER_ERROR
    assert bad_setup.reason is not None and bad_setup.reason.startswith("unknown backend 'no-such-backend'")

    impossible = run_job(Job(2, '{"layers": [{"type": "linear", "out_features": 10}]}', _settings()))
    assert impossible.failed and "kind" not in impossible.details
    assert impossible.reason is not None and impossible.reason.startswith("invalid architecture: ")

    def typo(*args: object, **kwargs: object) -> None:
        raise AttributeError("'Evaluation' object has no attribute 'acuracy'")

    monkeypatch.setattr("uhnas.evaluate.evaluate", typo)
    bug = run_job(Job(3, MLP, _settings()))
    assert bug.failed and bug.details["kind"] == BUG
    assert bug.reason == "AttributeError: 'Evaluation' object has no attribute 'acuracy'"
    assert any("typo" in line for line in bug.details["traceback"])  # the whole traceback, down to the raise

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    monkeypatch.setattr("uhnas.evaluate.evaluate", out_of_memory)
    memory = run_job(Job(4, MLP, _settings()))
    assert memory.failed and "kind" not in memory.details  # a resource limit: the candidate's failure


def _synthetic_then(fail: JobResult | None, at: tuple[int, int]) -> InlineExecutor:
    """Synthetic evaluations (tests/test_engine.py) except `fail` returned for (generation, slot) `at`."""
    from test_engine import synthetic_job

    def job_fn(job: Job) -> JobResult:
        if divmod(job.job_id, JOB_ID_STRIDE) == at and fail is not None:
            return JobResult(job.job_id, None, True, fail.reason, 0.0, dict(fail.details))
        return synthetic_job(job)

    return InlineExecutor(job_fn=job_fn)


def test_an_evaluation_bug_stops_the_run_and_it_resumes(tmp_path: Path) -> None:
    bug = JobResult(0, None, True, "KeyError: 'energy'", 0.0, {"kind": BUG, "traceback": ["  File x", "KeyError"]})
    config = tiny()
    with pytest.raises(EvaluationBug, match=r"evaluating candidate 1\.1 \(\w+\) raised KeyError: 'energy'"):
        run_search(config, tmp_path / "run", executor=_synthetic_then(bug, (1, 1)))
    stored = open_run(tmp_path / "run").records()
    assert (1, 1) not in {(r.generation, r.slot) for r in stored}  # never recorded as a failed candidate
    assert not any(r.failed for r in stored)
    result = run_search(config, tmp_path / "run", resume=True, executor=_synthetic_then(None, (1, 1)))
    assert len(result.records) == config.budget and not any(r.failed for r in result.records)


def test_a_setup_error_in_the_workers_is_one_line(tmp_path: Path) -> None:
    missing = JobResult(0, None, True, "mnist: no IDX files in /nowhere", 0.0, {"kind": USER_ERROR})
    with pytest.raises(SearchError, match=r"^candidate 0\.0: mnist: no IDX files in /nowhere$"):
        run_search(tiny(), tmp_path / "run", executor=_synthetic_then(missing, (0, 0)))
    stored = open_run(tmp_path / "run").records()  # jobs run costliest first: some may precede (0, 0)
    assert (0, 0) not in {(r.generation, r.slot) for r in stored} and not any(r.failed for r in stored)


def test_identical_failures_in_a_row_stop_the_run(tmp_path: Path) -> None:
    def timeout(job: Job) -> JobResult:
        return JobResult(job.job_id, None, True, "timed out after 3 s", 3.0)

    config = tiny("population=6", "executor.max_identical_failures=3")
    with pytest.raises(SearchError, match=r"stopped after 3 evaluations in a row failed .*: timed out after 3 s"):
        run_search(config, tmp_path / "run", executor=InlineExecutor(job_fn=timeout))
    records = open_run(tmp_path / "run").records()
    assert len(records) == 3 and all(r.reason == "timed out after 3 s" for r in records)


def test_different_failures_do_not_stop_the_run(tmp_path: Path) -> None:
    calls: list[int] = []

    def alternating(job: Job) -> JobResult:
        calls.append(job.job_id)
        return JobResult(job.job_id, None, True, f"worker died (signal {9 + len(calls) % 2})", 1.0)

    config = tiny("executor.max_identical_failures=2")
    result = run_search(config, tmp_path / "run", executor=InlineExecutor(job_fn=alternating))
    assert len(result.records) == config.budget and all(r.failed for r in result.records)


# ------------------------------------------------------------------------------------------ operator bugs


class _TypoOperator(RandomOperator):
    """Mutation has a bug; initialisation works."""

    def mutate(self, context: OperatorContext, parent: object) -> Proposal:
        return self.initialise(context)  # type: ignore[attr-defined]  # the typo: AttributeError


def test_an_operator_bug_stops_the_run_with_its_traceback(tmp_path: Path) -> None:
    from uhnas.search.conventional import NSGA2

    register_method("typo-nsga2", lambda setup: NSGA2(_TypoOperator(), crossover_prob=0.0))
    config = tiny("method=typo-nsga2")
    with pytest.raises(AttributeError, match="initialise"):
        run_search(config, tmp_path / "run", executor=_synthetic_then(None, (-1, -1)))
    assert len(open_run(tmp_path / "run").records()) == config.population  # generation 0 is kept


def test_a_proposal_error_is_a_refused_attempt(tmp_path: Path) -> None:
    class Refusing(RandomOperator):
        def mutate(self, context: OperatorContext, parent: object) -> Proposal:
            raise ProposalError("no valid mutation")

    from uhnas.search.conventional import NSGA2

    register_method("refusing-nsga2", lambda setup: NSGA2(Refusing(), crossover_prob=0.0))
    config = tiny("method=refusing-nsga2", "evolution.max_attempts=2")
    result = run_search(config, tmp_path / "run", executor=_synthetic_then(None, (-1, -1)))
    later = [r for r in result.records if r.generation > 0]
    assert later and all(r.failed for r in later)
    assert later[0].rejected == ["ProposalError: no valid mutation"] * 2


# ------------------------------------------------------------------------------------------------ imports


def _modules_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_ir_and_what_operators_read_import_no_torch_or_optuna() -> None:
    loaded = _modules_after(
        """
        import uhnas.arch, uhnas.records, uhnas.hardware.card, uhnas.search.operators.base, uhnas.errors
        import uhnas.search.operators.random, uhnas.search.space, uhnas.seeding
        from uhnas.arch import analyze, arch_hash, architecture_schema, parse_architecture, structural_distance
        """
    )
    assert "uhnas.search.operators.random" in loaded
    assert "torch" not in loaded
    assert "optuna" not in loaded


def test_a_conventional_run_imports_no_openai(tmp_path: Path) -> None:
    loaded = _modules_after(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_engine import SyntheticExecutor
        from uhnas.config import load_config
        from uhnas.search.engine import run_search
        config = load_config(None, ["backend=ideal", "population=4", "generations=1", "offspring=2", "mc=0"])
        run_search(config, {str(tmp_path / "run")!r}, executor=SyntheticExecutor())
        """
    )
    assert "uhnas.search.engine" in loaded
    assert "openai" not in loaded
    assert not any(name.startswith("uhnas.llm.client") for name in loaded)
