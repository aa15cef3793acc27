"""The LLM-guided methods (uhnas, llmatic, genius) end to end: real client, loopback fake server, no training
(synthetic executor) except one small real run. Faults, repairs, prompt injection, replay, budget and resume."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer

from fake_llm_server import FakeLLMServer, Step, closed_port_url, http_error
from llm_responders import (
    FAULTS,
    HTML,
    INJECTION,
    ArchResponder,
    FaultPlan,
    SyntheticExecutor,
    kind_of,
    llm_run_config,
    user_text,
    when,
)
from uhnas.arch import ACTIVATIONS, LAYER_TYPES, architecture_schema, parse_architecture
from uhnas.config import RunConfig
from uhnas.data import dataset_spec
from uhnas.errors import ProposalError
from uhnas.hardware.card import Violation
from uhnas.hardware.registry import load_backend
from uhnas.llm import client as llm_client
from uhnas.llm.cache import CallLog
from uhnas.llm.errors import BudgetExceeded, CacheMiss, LLMError, LLMRetriesExhausted, LLMUnavailable
from uhnas.llm.prompting import answer_schema, llmatic_instructions
from uhnas.llm.propose import TRUNCATED
from uhnas.search import llm_methods
from uhnas.search.engine import run_search
from uhnas.search.llm_methods import LLMNotConfigured
from uhnas.search.methods import MethodSetup
from uhnas.search.operators.base import OperatorContext
from uhnas.search.operators.llm import DUPLICATE, FALLBACK_OPERATOR, ArchValidator
from uhnas.search.operators.llm_validate import DUPLICATE_HINT
from uhnas.seeding import numpy_rng
from uhnas.store import RunStore, TrialRecord, open_run

STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries of dropped connections / 500s without Retry-After wait milliseconds, not seconds."""
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.005)
    monkeypatch.setattr(llm_client, "BACKOFF_MAX_S", 0.05)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=ArchResponder()) as srv:
        yield srv


def run(config: RunConfig, out: Path, **kwargs: Any) -> list[TrialRecord]:
    """Run (or resume) a search with the synthetic executor; return the stored records."""
    run_search(config, out, executor=SyntheticExecutor(), **kwargs)
    return open_run(out).records()


def check_complete(out: Path, config: RunConfig) -> list[TrialRecord]:
    """Budget met, one trial per (generation, slot), no architecture evaluated twice."""
    records = open_run(out).records()
    slots = sorted((r.generation, r.slot) for r in records)
    expected = [(0, s) for s in range(config.population)]
    expected += [(g, s) for g in range(1, config.generations + 1) for s in range(config.offspring)]
    assert slots == expected
    hashes = [r.hash for r in records if r.hash is not None]
    assert len(hashes) == len(set(hashes))
    return records


def trials(out: Path) -> set[tuple[Any, ...]]:
    """What must match between two runs of the same search."""
    return {(r.hash, r.generation, r.slot, r.error, r.energy_nj, r.state, r.operator, r.parents)
            for r in open_run(out).records()}  # fmt: skip


def calls(out: Path) -> list[dict[str, Any]]:
    """The run's LLM call log."""
    log = CallLog(out / "llm.db")
    try:
        return log.calls()
    finally:
        log.close()


def prompt_messages(srv: FakeLLMServer) -> list[dict[str, str]]:
    """Every system and user message the server received."""
    return [m for r in srv.chat_requests for m in r.body["messages"] if m["role"] in ("system", "user")]  # type: ignore[index]


# ----------------------------------------------------------------------------- uhnas through faults


def test_uhnas_completes_its_budget_through_faults_and_repairs_invalid_answers(tmp_path: Path) -> None:
    plan = FaultPlan.every(ArchResponder(), period=2)
    with FakeLLMServer(responder=plan) as srv:
        config = llm_run_config(srv.base_url, "generations=3", "offspring=3", "llm.timeout_s=5")
        records = run(config, tmp_path / "run")
    check_complete(tmp_path / "run", config)
    assert all(not r.failed for r in records)
    assert set(plan.served) == set(FAULTS)  # every fault kind was served at least once
    ops = Counter(r.operator for r in records)
    assert ops["llm.init"] == config.population and ops["llm.mutate"] + ops["llm.crossover"] == 9
    assert all(r.parents for r in records if r.generation > 0)

    log = calls(tmp_path / "run")
    verdicts = Counter(c["meta"].get("verdict") for c in log if c["purpose"] != "reflect")
    assert {"malformed", "schema", "shape", "duplicate", "valid"} <= set(verdicts)
    assert verdicts["valid"] == config.budget  # every slot ended with one valid answer
    for c in log:  # each invalid answer is logged with its errors and followed by a repair turn of the same slot
        if c["meta"].get("outcome") == "invalid" and c["purpose"] != "reflect":
            assert c["meta"]["errors"] and c["meta"]["attempt"] < c["meta"]["max_attempts"]
            later = [d for d in log if d["id"] > c["id"] and d["purpose"] != "reflect"]
            nxt = later[0]
            assert (nxt["meta"]["generation"], nxt["meta"]["slot"]) == (c["meta"]["generation"], c["meta"]["slot"])
            earlier = [d for d in log if d["id"] < c["id"] and d["purpose"] == c["purpose"]]
            second_duplicate = (c["meta"]["verdict"] == "duplicate" and c["meta"]["attempt"] > 1
                                and earlier[-1]["meta"]["verdict"] == "duplicate")  # fmt: skip
            parent_copy = c["meta"]["verdict"] == "duplicate" and "(a parent)" in c["meta"]["errors"][0]
            if second_duplicate or parent_copy:  # the conversation ends: the slot is asked afresh
                assert nxt["meta"]["attempt"] == 1 and len(nxt["request"]["messages"]) == 2
                continue
            assert nxt["purpose"] == c["purpose"] and nxt["meta"]["attempt"] == c["meta"]["attempt"] + 1
            repair = nxt["request"]["messages"][-1]["content"]
            assert all(e in repair for e in c["meta"]["errors"])
    assert any(c["attempts"] > 1 for c in log)  # 429 / 500 / dropped connections retried inside one call
    repaired = [r for r in records if r.metadata["llm"]["repairs"] > 0]
    assert repaired and all(len(r.metadata["llm"]["call_ids"]) == r.metadata["llm"]["attempts"] for r in records)
    assert any(DUPLICATE in " ".join(c["meta"].get("errors", [])) for c in log)

    # injected text reached later prompts only as quoted data; HTML never unescaped
    messages = prompt_messages(srv)
    assert any(INJECTION in m["content"] for m in messages)  # it did come back (quoted), so the check means something
    for m in messages:
        outside = STRING_LITERAL.sub('""', m["content"])
        assert INJECTION.lower() not in outside.lower(), m["content"]
        assert "ignore previous instructions" not in outside.lower()
        assert "<script>" not in m["content"] and "<img" not in m["content"] and HTML not in m["content"]
    assert any("\\u003cscript\\u003e" in m["content"] for m in messages)  # HTML came back escaped, inside quotes
    notes = [e["notes"] for e in open_run(tmp_path / "run").generation_log()]
    assert all(n and isinstance(n["knowledge"], list) for n in notes)
    assert notes[0]["reflected"] and not notes[-1]["reflected"]  # the last generation's reflection is skipped
    assert notes[-1]["llm_usage"]["calls"] == len(log)


# ----------------------------------------------------------------------------- replay


def test_replay_reproduces_every_trial_with_the_network_forbidden(tmp_path: Path) -> None:
    plan = FaultPlan(ArchResponder(), {2: "malformed", 5: "duplicate", 7: "500", 9: "schema"})
    with FakeLLMServer(responder=plan) as srv:
        config = llm_run_config(srv.base_url, "generations=3", "offspring=3")
        run(config, tmp_path / "original")
    original = calls(tmp_path / "original")
    assert any(c["meta"].get("outcome") == "invalid" for c in original)

    replay = llm_run_config(closed_port_url(), "generations=3", "offspring=3",
                            f"llm.provider=replay:{tmp_path / 'original'}")  # fmt: skip
    run(replay, tmp_path / "replayed")
    assert trials(tmp_path / "replayed") == trials(tmp_path / "original")
    replayed = calls(tmp_path / "replayed")
    assert len(replayed) == len(original) and {c["source"] for c in replayed} == {"replay"}
    assert [c["key"] for c in replayed] == [c["key"] for c in original]

    diverged = llm_run_config(closed_port_url(), "generations=3", "offspring=3", "seed=1",
                              f"llm.provider=replay:{tmp_path / 'original'}")  # fmt: skip
    with pytest.raises(CacheMiss, match="diverged"):
        run(diverged, tmp_path / "diverged")
    assert open_run(tmp_path / "diverged").records() == []


# ----------------------------------------------------------------------------- budget, faults that stop the run


def test_budget_stops_the_run_and_resume_with_a_larger_budget_completes_it(tmp_path: Path) -> None:
    extra = ("generations=3", "offspring=3")
    with FakeLLMServer(responder=ArchResponder()) as srv:
        run(llm_run_config(srv.base_url, *extra), tmp_path / "straight")
        spent = sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls(tmp_path / "straight"))

        small = llm_run_config(srv.base_url, *extra, f"llm.budget_tokens={spent // 2}")
        with pytest.raises(BudgetExceeded, match="resume with a larger") as caught:
            run(small, tmp_path / "run")
        assert "\n" not in str(caught.value)
        stored = open_run(tmp_path / "run").records()
        assert small.population <= len(stored) < small.budget
        first = calls(tmp_path / "run")

        larger = llm_run_config(srv.base_url, *extra, f"llm.budget_tokens={spent * 10}")
        run(larger, tmp_path / "run", resume=True)
    check_complete(tmp_path / "run", larger)
    assert trials(tmp_path / "run") == trials(tmp_path / "straight")  # nothing repeated, nothing lost
    after = calls(tmp_path / "run")
    live = [c for c in after if c["source"] == "live"]
    assert len(live) == len(calls(tmp_path / "straight"))  # the interrupted calls were never paid twice
    assert {c["source"] for c in after[len(first) :][: len(first)]} == {"cache"}  # re-derived from the cache


def test_persistent_server_errors_stop_the_run_with_completed_trials_stored(tmp_path: Path) -> None:
    failing = when(lambda body: kind_of(user_text(body)) in ("mutate", "crossover"),
                   lambda body: http_error(500, "overloaded", {"Retry-After": "0"}), ArchResponder())  # fmt: skip
    with FakeLLMServer(responder=failing) as srv:
        config = llm_run_config(srv.base_url, "llm.max_retries=1")
        with pytest.raises(LLMRetriesExhausted, match=r"failed after 2 attempts; last error: HTTP 500") as caught:
            run(config, tmp_path / "run")
    assert len(open_run(tmp_path / "run").records()) == config.population
    assert isinstance(caught.value, LLMError) and "\n" not in str(caught.value)

    from uhnas.cli import cli_errors  # the CLI prints it as one line, exit code 2

    with pytest.raises(typer.Exit) as exit_info, cli_errors():
        raise caught.value
    assert exit_info.value.exit_code == 2


def test_without_llm_config_the_error_says_how_to_configure_one(tmp_path: Path) -> None:
    from uhnas.config import load_config

    for method in ("uhnas", "llmatic", "genius"):
        config = load_config(None, ["backend=ideal", f"method={method}"])
        with pytest.raises(LLMNotConfigured) as caught:
            run_search(config, tmp_path / method, executor=SyntheticExecutor())
        assert str(caught.value) == (
            f"method '{method}' needs a language model: pass --llm openai --model NAME [--base-url URL] "
            "(e.g. Ollama: --base-url http://localhost:11434/v1) or add an llm: section to the config"
        )
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, LLMError)


def test_unreachable_endpoint_or_unknown_model_fails_before_any_evaluation(
    tmp_path: Path, server: FakeLLMServer
) -> None:
    with pytest.raises(LLMUnavailable, match="cannot reach LLM endpoint"):
        run(llm_run_config(closed_port_url()), tmp_path / "a")
    with pytest.raises(LLMUnavailable, match="model 'other' not served"):
        run(llm_run_config(server.base_url, "llm.model=other"), tmp_path / "b")
    for name in ("a", "b"):
        assert not RunStore.exists(tmp_path / name)  # no run directory is left to resume or delete
        assert not (tmp_path / name).exists()  # not even one holding only llm.db
    assert server.chat_requests == []


# ----------------------------------------------------------------------------- prompts, seeds, init fallback


def test_system_prompt_variants_differ_and_seeds_are_per_call(tmp_path: Path) -> None:
    received: dict[str, list[dict[str, Any]]] = {}
    for variant in ("hardware-aware", "generic", "minimal"):
        with FakeLLMServer(responder=ArchResponder()) as srv:
            config = llm_run_config(srv.base_url, "population=3", "generations=0", f"llm.system_prompt={variant}")
            run(config, tmp_path / variant)
            received[variant] = [r.body for r in srv.chat_requests]  # type: ignore[misc]
    constant = next(iter(load_backend("ideal").describe().constants))
    systems = {v: [b["messages"][0]["content"] for b in bodies] for v, bodies in received.items()}
    assert all(constant in s and "ideal" in s for s in systems["hardware-aware"])
    assert not any(constant in s for v in ("generic", "minimal") for s in systems[v])
    assert len(set(s[0] for s in systems.values())) == 3 and len(systems["minimal"][0]) < len(systems["generic"][0])
    users = {v: [b["messages"][1]["content"] for b in bodies[:1]] for v, bodies in received.items()}
    assert users["hardware-aware"] == users["generic"] == users["minimal"]  # only the system prompt differs
    seeds = [b["seed"] for b in received["generic"]]
    assert len(set(seeds)) == len(seeds) == 3 and all(0 <= s < 2**31 for s in seeds)
    assert [b["seed"] for b in received["minimal"]] == seeds  # derived from (run seed, generation, slot, attempt)

    with FakeLLMServer(responder=ArchResponder()) as srv:
        run(llm_run_config(srv.base_url, "population=3", "generations=0", "llm.seed=7"), tmp_path / "fixed")
        assert {r.body["seed"] for r in srv.chat_requests} == {7}  # type: ignore[index]


def test_init_fallback_to_the_conventional_initializer_is_recorded(tmp_path: Path) -> None:
    """A model that never answers JSON: each slot costs at most max_calls_per_slot calls, after fallback_after
    failed slots one probe call per generation; the conventional operator fills every slot and says why."""
    with FakeLLMServer(responder=lambda body: "I would rather not design networks today.") as srv:
        config = llm_run_config(srv.base_url, "generations=0", "llm.max_repairs=0", "llm.max_calls_per_slot=2",
                                "llm.fallback_after=2")  # fmt: skip
        records = {r.slot: r for r in run(config, tmp_path / "run")}
        assert len(srv.chat_requests) == 2 + 2 + 1  # slots 0 and 1: their cap; slot 2: the probe; slot 3: none
    assert all(r.operator == FALLBACK_OPERATOR and not r.failed for r in records.values())
    assert records[0].attempt == 1 and len(records[0].rejected) == 1  # filled in the attempt that spent the cap
    assert "llm.init: init: no valid answer after 1 attempts" in records[0].rejected[0]
    assert "no valid LLM answer in 2 calls (last: malformed)" in records[0].metadata["llm_fallback"]["reason"]
    assert records[0].metadata["llm"]["verdicts"] == ["malformed"]
    assert "probe call was spent" in records[3].metadata["llm_fallback"]["reason"]
    assert [c["meta"]["verdict"] for c in calls(tmp_path / "run")] == ["malformed"] * 5


def test_call_cap_and_fallback_bound_every_slot_and_the_run_finishes_its_budget(tmp_path: Path) -> None:
    """max_attempts 2 (the issue's setting): no slot is recorded as FAIL, every slot costs <= max_calls_per_slot
    calls, mutation slots fall back to conventional mutation, and the accounting says what the LLM proposed."""
    bad = json.dumps({"layers": [{"type": "conv2d", "out_channels": 4, "kernel": 7}, {"type": "flatten"},
                                 {"type": "conv2d", "out_channels": 4, "kernel": 3}]})  # fmt: skip
    responder = when(lambda body: kind_of(user_text(body)) == "init", ArchResponder(), lambda body: bad)
    with FakeLLMServer(responder=responder) as srv:
        config = llm_run_config(srv.base_url, "evolution.max_attempts=2", "generations=3", "offspring=3",
                                "llm.max_calls_per_slot=4", "llm.fallback_after=3")  # fmt: skip
        records = run(config, tmp_path / "run")
    check_complete(tmp_path / "run", config)
    assert not any(r.failed for r in records)
    per_slot = Counter((c["meta"]["generation"], c["meta"]["slot"]) for c in calls(tmp_path / "run")
                       if c["purpose"] != "reflect")  # fmt: skip
    assert max(per_slot.values()) <= 4
    later = [r for r in records if r.generation > 0]
    assert all(r.operator.endswith("(llm-fallback)") for r in later)
    assert {r.operator for r in later} <= {"random-mutate(llm-fallback)", "random-crossover(llm-fallback)"}
    assert sum(per_slot[(r.generation, r.slot)] > 0 for r in later) == 3 + 2  # 3 failed slots, then 1 probe/gen
    status = open_run(tmp_path / "run").status().to_dict()["llm"]
    assert status["proposals"] == {"slots": 13, "llm": 4, "llm_first_time": 4, "llm_after_repair": 0,
                                   "llm_autofixed": 0, "fallback": 9, "failed": 0, "llm_share": 0.3077}  # fmt: skip
    assert status["answers"] == {"shape": sum(per_slot.values()) - 4, "valid": 4}
    assert status["calls"] == sum(per_slot.values()) + sum(status["reflect_answers"].values())


def operator_context(known: set[str], generation: int = 1, attempt: int = 0) -> OperatorContext:
    """A context for digits on the ideal backend with no history; `known` holds the evaluated hashes."""
    shape, classes = dataset_spec("digits")
    return OperatorContext(
        generation=generation, slot=0, attempt=attempt, rng=numpy_rng(0), seed=0, dataset="digits",
        input_shape=shape, num_classes=classes, backend=load_backend("ideal").describe(), objective="mean",
        population=(), front=(), recent=(), history=(), is_known=known.__contains__, generations=2, offspring=2,
        population_size=2,
    )  # fmt: skip


def test_the_model_sees_every_layer_type_and_activation_of_the_ir(tmp_path: Path, server: FakeLLMServer) -> None:
    run(llm_run_config(server.base_url, "population=2", "generations=0"), tmp_path / "run")
    for request in server.chat_requests:
        body: Any = request.body
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema == answer_schema(architecture_schema()) and list(schema["properties"])[0] == "layers"
        assert schema["properties"]["rationale"]["maxLength"] == 300
        user = body["messages"][1]["content"]
        offered = {t for group in re.findall(r'^  \{"type": ((?:"\w+"(?: \| )?)+)', user, flags=re.M)
                   for t in re.findall(r'"(\w+)"', group)}  # fmt: skip
        assert offered == set(LAYER_TYPES) and all(f'"{a}"' in user for a in ACTIVATIONS)


def test_only_an_answer_that_stays_invalid_is_a_proposal_error(tmp_path: Path) -> None:
    with FakeLLMServer(responder=lambda body: "no architecture today") as srv:
        config = llm_run_config(srv.base_url, "llm.max_repairs=0", "llm.max_retries=0")
        setup = MethodSetup(config, *dataset_spec("digits"), hv_reference=(1.0, 3.0), out=tmp_path)
        method = llm_methods.make_uhnas(setup)
        with pytest.raises(ProposalError, match=r"^llm\.init: init: no valid answer after 1 attempts") as caught:
            method.propose(operator_context(set(), generation=0))
        assert not isinstance(caught.value, LLMError)
    with pytest.raises(LLMRetriesExhausted) as failed:  # the server is gone: a client failure, not a bad answer
        method.propose(operator_context(set(), generation=0, attempt=1))
    assert not isinstance(failed.value, ProposalError)
    method.close()


def test_a_bug_in_a_prompt_family_stops_the_run_with_its_own_error(
    tmp_path: Path, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(record: TrialRecord, context: OperatorContext) -> dict[str, Any]:
        raise RuntimeError("bug in the mutate family")

    monkeypatch.setattr("uhnas.search.operators.llm.parent_summary", broken)
    config = llm_run_config(server.base_url, "evolution.crossover_prob=0")
    with pytest.raises(RuntimeError, match="bug in the mutate family"):
        run(config, tmp_path / "run")
    assert len(open_run(tmp_path / "run").records()) == config.population  # generation 0 kept


def test_validator_reports_schema_shape_constraint_and_duplicate_errors_exactly() -> None:
    known = {"x"}
    context = operator_context(known)
    limit = 2000
    validator = ArchValidator(
        context, lambda s: [Violation("max_macs_demo", limit, s.macs, "MACs")] if s.macs > limit else []
    )
    mlp = {
        "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 16}, {"type": "linear", "out_features": 10}]
    }
    big = {
        "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 512}, {"type": "linear", "out_features": 10}]
    }
    assert validator.judge(mlp) == ("valid", [])
    verdict, errors = validator.judge(big)
    assert verdict == "constraint" and errors[0].startswith(
        "violates the hardware limit max_macs_demo: 37,888 MACs > limit 2,000 MACs"
    )
    known.add(__import__("uhnas.arch", fromlist=["arch_hash"]).arch_hash(parse_architecture(mlp)))
    assert validator.judge(mlp) == ("duplicate", [f"{DUPLICATE}: it is a network already proposed in this generation; "
                                                  f"{DUPLICATE_HINT}"])  # fmt: skip
    verdict, errors = validator.judge({"layers": [{"type": "linear", "out_features": 10}]})
    assert verdict == "shape" and "insert a flatten layer" in errors[0] and "the input is 1x8x8" in errors[0]
    verdict, errors = validator.judge({"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 0}]})
    assert verdict == "schema" and errors == [
        "layer 1 (linear): out_features: Input should be greater than or equal to 1"
    ]
    layers = [{"type": "<b>x</b>"}, {"type": "linear", "out_features": 10, "act": 1}]
    verdict, errors = validator.judge({"layers": layers, "why": 1})
    assert verdict == "schema"
    assert errors[0] == 'unknown key "why" at the top level (allowed: name, rationale, layers)'
    assert errors[1].startswith(
        'layer 0: unknown layer type "\\u003cb\\u003ex\\u003c/b\\u003e"; expected one of linear'
    )
    assert errors[2] == 'layer 1 (linear): unknown field "act" (allowed: type, out_features, bias)'
    over_long = {**mlp, "layers": big["layers"][:1] + mlp["layers"][1:], "rationale": "r" * 5000, "name": "n" * 200}
    assert validator.judge(over_long)[0] == "duplicate"  # truncated name / rationale are not worth a repair


def mlp_record(number: int, *layers: dict[str, Any], energy: float = 1.0) -> TrialRecord:
    """An evaluated digits MLP (flatten, `layers`, linear 10) stored as trial `number`."""
    arch = {"layers": [{"type": "flatten"}, *layers, {"type": "linear", "out_features": 10}]}
    key = __import__("uhnas.arch", fromlist=["arch_hash"]).arch_hash(parse_architecture(arch))
    return TrialRecord(generation=0, slot=number, number=number, arch=arch, hash=key, error=0.5, energy_nj=energy)


def test_a_duplicate_names_the_networks_taken_one_edit_away_and_two_in_a_row_end_the_proposal() -> None:
    width = {"type": "linear", "out_features": 16}
    history = (
        mlp_record(3, width),
        mlp_record(5, width, {"type": "activation", "function": "relu"}),  # one layer inserted: distance 1
        mlp_record(7, {"type": "linear", "out_features": 24}),  # a width changed: distance < 1
        mlp_record(9, {"type": "linear", "out_features": 64}, {"type": "activation", "function": "tanh"},
                   {"type": "linear", "out_features": 64}),  # three edits away: not named
    )  # fmt: skip
    context = operator_context({r.hash for r in history if r.hash}).__class__(
        **{**operator_context(set()).__dict__, "history": history,
           "is_known": {r.hash for r in history}.__contains__},
    )  # fmt: skip
    validator = ArchValidator(context, lambda s: [], parents=(9,))
    assert validator.saturated() is None
    errors = validator({"layers": history[0].arch["layers"]})  # type: ignore[index]
    assert validator.verdicts[-1][0] == "duplicate"
    assert errors == [f"{DUPLICATE}: it is #3; {DUPLICATE_HINT}; already evaluated one edit from it: "
                      "#7 (flatten | linear 24 | linear 10), #5 (flatten | linear 16 | relu | linear 10)"]  # fmt: skip
    assert validator.saturated() is None  # one duplicate: repair as usual
    validator({"layers": history[1].arch["layers"]})  # type: ignore[index]
    assert validator.verdicts[-1][0] == "duplicate"
    assert validator.saturated() == "two duplicates in a row (the parents' neighbourhood is taken)"
    fresh = {
        "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 20}, {"type": "linear", "out_features": 10}]
    }
    assert validator(fresh) == [] and validator.saturated() is None
    # a parent sent back unchanged ends the conversation at once (a small model copies its copy again)
    copier = ArchValidator(context, lambda s: [], parents=(3, 9))
    assert copier({"layers": history[0].arch["layers"]})[0].startswith(f"{DUPLICATE}: it is #3 (a parent)")  # type: ignore[index]
    assert (
        copier.saturated() == "the answer repeated a parent unchanged" and copier.refusal("duplicate") == "parent-copy"
    )
    assert copier(fresh) == [] and copier.saturated() is None and copier.refusal("shape") == "shape"


def test_a_parent_sent_back_ends_the_conversation_and_the_slot_is_asked_afresh(tmp_path: Path) -> None:
    def parrot(body: dict[str, Any]) -> str:
        """Answers every mutation with its parent (a duplicate), everything else as the cooperative model."""
        user = user_text(body)
        if kind_of(user) != "mutate":
            return ArchResponder(hostile=False)(body)
        return re.findall(r'^(\{"layers".*\})$', user.split("## Parent\n", 1)[1], re.MULTILINE)[0]

    with FakeLLMServer(responder=parrot) as srv:
        config = llm_run_config(srv.base_url, "population=4", "generations=1", "offspring=2",
                                "evolution.crossover_prob=0", "llm.max_repairs=2")  # fmt: skip
        run(config, tmp_path / "run")
    records = check_complete(tmp_path / "run", config)
    mutate = [c for c in calls(tmp_path / "run") if c["purpose"] == "mutate"]
    assert mutate and all(c["meta"]["verdict"] == "duplicate" for c in mutate)
    assert max(c["meta"]["attempt"] for c in mutate) == 1  # no repair turn for a copied parent
    per_slot = Counter(c["meta"]["slot"] for c in mutate)
    assert per_slot == {0: 6, 1: 6}  # 6 fresh conversations of 1 call: the slot's call cap, then the fallback
    later = [c for c in mutate if c["meta"]["slot_attempt"] > 0]
    assert later and all("(parent-copy)" in c["request"]["messages"][1]["content"] for c in later)
    assert [r.operator for r in records if r.generation == 1] == ["random-mutate(llm-fallback)"] * 2


def test_the_near_list_puts_networks_on_the_targets_side_of_the_parent_first() -> None:
    from uhnas.search.operators.llm_summary import neighbours

    parent = mlp_record(1, {"type": "linear", "out_features": 32}, energy=10.0)
    smaller = mlp_record(2, {"type": "linear", "out_features": 16}, energy=5.0)
    larger = mlp_record(3, {"type": "linear", "out_features": 48}, energy=15.0)
    same = mlp_record(
        4, {"type": "linear", "out_features": 32}, {"type": "activation", "function": "relu"}, energy=10.0
    )
    context = operator_context(set()).__class__(**{**operator_context(set()).__dict__,
                                                   "history": (parent, smaller, larger, same)})  # fmt: skip

    def arch_of(record: TrialRecord) -> Any:
        return parse_architecture(record.arch)

    def order(direction: int) -> list[int]:
        return [c["trial"] for c in neighbours(context, [parent], set(), arch_of, (), direction, 10.0)]

    assert order(-1)[0] == 2 and order(+1)[0] == 3  # the side a child following the target lands on
    assert set(order(0)) == {2, 3, 4} and len(order(0)) == 3


def test_a_cnn_parent_says_what_image_its_layers_leave_before_flatten() -> None:
    from uhnas.search.operators.llm_summary import parent_summary

    conv = {"type": "conv2d", "out_channels": 4, "kernel": 3, "stride": 2, "padding": 1}
    cnn = {
        "layers": [conv, {"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]
    }
    record = TrialRecord(generation=0, slot=0, number=2, arch=cnn, hash="c", error=0.5, energy_nj=1.0)
    context = operator_context(set())
    assert parent_summary(record, context)["image"] == [4, 2, 2]  # 8x8 -> stride 2 -> 4x4 -> maxpool 2 -> 2x2
    assert "image" not in parent_summary(mlp_record(1, {"type": "linear", "out_features": 8}), context)


# ----------------------------------------------------------------------------- the baselines


def test_llmatic_completes_a_tiny_budget_with_its_fixed_prompts(tmp_path: Path, server: FakeLLMServer) -> None:
    config = llm_run_config(server.base_url, "generations=4", "offspring=3", method="llmatic")
    records = run(config, tmp_path / "run")
    check_complete(tmp_path / "run", config)
    assert {r.operator for r in records if r.generation == 0} == {"llmatic.init"}
    assert {r.operator for r in records if r.generation > 0} <= {"llmatic.mutate", "llmatic.crossover"}
    mutations = [r for r in records if r.operator == "llmatic.mutate"]
    assert mutations and all(0 <= r.metadata["llm"]["instruction"] < len(llmatic_instructions()) for r in mutations)
    bodies = [r.body for r in server.chat_requests]
    systems = {b["messages"][0]["content"] for b in bodies}  # type: ignore[index]
    constant = next(iter(load_backend("ideal").describe().constants))
    assert len(systems) == 1 and constant not in systems.pop()  # generic system prompt, no hardware constants
    llmatic_users = [
        b["messages"][1]["content"] for b in bodies if "Here is a neural network:" in b["messages"][1]["content"]
    ]  # type: ignore[index]
    assert llmatic_users and all(any(i in u for i in llmatic_instructions()) for u in llmatic_users)
    assert not any("energy" in u.split("## Answer format")[0] for u in llmatic_users)  # no scores, no energy
    population = open_run(tmp_path / "run").population()
    cells = [llm_methods.descriptor(r, *dataset_spec("digits")) for r in population]
    assert len(cells) == len(set(cells))  # the reported population is one elite per archive cell


def test_genius_refines_one_chain_and_shows_the_model_its_own_history(tmp_path: Path, server: FakeLLMServer) -> None:
    config = llm_run_config(server.base_url, "generations=3", "offspring=2", method="genius")
    records = run(config, tmp_path / "run")
    check_complete(tmp_path / "run", config)
    assert {r.operator for r in records} == {"genius.refine"}
    prompts = [r.body["messages"][1]["content"] for r in server.chat_requests if len(r.body["messages"]) == 2]  # type: ignore[index]
    chain = [len(re.findall(r"^\d+\. ", p.split("## Your proposals so far")[1], re.MULTILINE))
             for p in prompts if "## Your proposals so far" in p]  # fmt: skip
    assert chain == list(range(config.budget))  # every proposal sees all earlier ones, oldest first
    last = prompts[-1]
    assert "error 0." in last and "energy" in last  # scores of evaluated proposals are shown


# ----------------------------------------------------------------------------- one real run


def test_uhnas_with_real_training(tmp_path: Path, server: FakeLLMServer) -> None:
    config = llm_run_config(server.base_url, "population=2", "generations=1", "offspring=1")
    result = run_search(config, tmp_path / "run")
    records = check_complete(tmp_path / "run", config)
    assert all(not r.failed and r.evaluation and r.evaluation["epochs"] == 1 for r in records)
    assert result.hypervolume > 0 and np.isfinite(result.hypervolume)


def test_a_template_bug_stops_the_run_instead_of_failing_every_slot(
    tmp_path: Path, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uhnas.llm import prompting
    from uhnas.llm.prompting import PromptError

    real = prompting.render_messages

    def broken(kind: str, context: dict[str, Any], **kwargs: Any) -> list[dict[str, str]]:
        if kind == "mutate":
            raise PromptError("template 'mutate' needs context key 'parent'")
        return real(kind, context, **kwargs)

    monkeypatch.setattr("uhnas.search.operators.llm_ask.render_messages", broken)
    config = llm_run_config(server.base_url, "evolution.crossover_prob=0")
    with pytest.raises(PromptError, match="needs context key 'parent'"):
        run(config, tmp_path / "run")
    records = open_run(tmp_path / "run").records()
    assert len(records) == config.population and not any(r.failed for r in records)  # generation 0 kept, no FAIL slots


# ----------------------------------------------------------------------------- issue 13: small local models


def first_answers(*answers: str | Step) -> Any:
    """A responder answering the first architecture requests with `answers`, then cooperatively."""
    queue = list(answers)
    cooperative = ArchResponder(hostile=False)

    def respond(body: dict[str, Any]) -> str | Step:
        if queue and kind_of(user_text(body)) != "reflect":
            return queue.pop(0)
        return cooperative(body)

    return respond


def test_replay_of_an_interrupted_run_says_the_original_stopped_here(tmp_path: Path) -> None:
    extra = ("generations=3", "offspring=3")
    with FakeLLMServer(responder=ArchResponder()) as srv:
        with pytest.raises(BudgetExceeded):
            run(llm_run_config(srv.base_url, *extra, "llm.budget_tokens=8000"), tmp_path / "original")
    replay = llm_run_config(closed_port_url(), *extra, f"llm.provider=replay:{tmp_path / 'original'}")
    with pytest.raises(CacheMiss) as caught:
        run(replay, tmp_path / "replayed")
    message = str(caught.value)
    assert "the original run stopped here" in message and "diverged" not in message
    assert trials(tmp_path / "replayed") == trials(tmp_path / "original")  # identical up to where it stopped


def test_truncated_answer_is_reported_as_truncated(tmp_path: Path) -> None:
    cut = '{"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 32, "bias": true}, {"type": "acti'
    with FakeLLMServer(responder=first_answers(Step(text=cut, finish_reason="length"))) as srv:
        run(llm_run_config(srv.base_url, "population=2", "generations=0"), tmp_path / "run")
        repair = srv.chat_requests[1].body["messages"]  # type: ignore[index]
    log = calls(tmp_path / "run")
    assert log[0]["meta"]["verdict"] == "truncated" and log[0]["meta"]["errors"] == [TRUNCATED]
    assert "unknown key" not in " ".join(log[0]["meta"]["errors"])  # the inner layer object is not judged
    assert repair[2] == {
        "role": "assistant",
        "content": f"(answer cut off at the token limit after {len(cut)} characters)",
    }
    assert TRUNCATED in repair[3]["content"] and log[1]["meta"]["verdict"] == "valid"


def test_every_shape_error_is_in_one_repair_turn(tmp_path: Path) -> None:
    both = json.dumps({"layers": [{"type": "linear", "out_features": 32}, {"type": "activation", "function": "relu"},
                                  {"type": "conv2d", "out_channels": 4, "kernel": 3}, {"type": "flatten"},
                                  {"type": "linear", "out_features": 10}]})  # fmt: skip
    with FakeLLMServer(responder=first_answers(both)) as srv:
        run(llm_run_config(srv.base_url, "population=2", "generations=0", "llm.autofix=false"), tmp_path / "run")
        repair = srv.chat_requests[1].body["messages"][-1]["content"]  # type: ignore[index]
    errors = calls(tmp_path / "run")[0]["meta"]["errors"]
    assert len(errors) == 3 and calls(tmp_path / "run")[0]["meta"]["verdict"] == "shape"
    assert errors[0].startswith("layer 0 (linear): input is 1x8x8 (not flat); insert a flatten layer before it")
    assert errors[1].startswith("layer 2 (conv2d): input is flat") and "must come before the flatten" in errors[1]
    assert errors[2].startswith("layer 3 (flatten): input is already flat")
    assert "All 3 problems found" in repair and all(e in repair for e in errors)
    numbered = "0 linear 32 <- problem\n1 relu\n2 conv2d 4 k3 <- problem\n3 flatten <- problem\n4 linear 10\n"
    assert f"Your layers, numbered from 0:\n{numbered}" in repair


def test_a_flatten_before_the_image_layers_is_named_once_with_the_fix() -> None:
    from uhnas.search.operators.llm_validate import shape_report

    conv, relu = {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1}, {"type": "activation",
                                                                                    "function": "relu"}  # fmt: skip
    flat, head = {"type": "flatten"}, {"type": "linear", "out_features": 10}

    def errors(*layers: dict[str, Any]) -> list[str]:
        report = shape_report(parse_architecture({"layers": list(layers)}), (1, 8, 8), 10)
        assert report.fixed is None  # moving a flatten is design, not plumbing: a repair turn, never an auto-fix
        return report.errors

    # Qwen2.5-Coder 1.5B's CNN: flatten first, then the conv block, then another flatten
    assert errors(flat, conv, relu, conv, {"type": "maxpool", "kernel": 2}, flat, head) == [
        "layer 0 (flatten): it comes before the layers 1 (conv2d), 3 (conv2d), 4 (maxpool), which need the image "
        "(conv2d and pooling work on C x H x W); remove it (layer 5 flattens after them)"
    ]
    assert errors(flat, conv, relu, head)[0].endswith("; move it to just after layer 1, the last of them")
    assert len(errors(flat, conv, relu, head)) == 1  # with it moved the network is valid: nothing else to report
    # a linear layer among them: the layer-by-layer errors say more than "move the flatten"
    assert errors(flat, {"type": "linear", "out_features": 8}, conv, head)[0].startswith(
        "layer 2 (conv2d): input is flat"
    )


def test_trivial_shape_errors_are_autofixed_and_counted_apart(tmp_path: Path) -> None:
    mlp = json.dumps({"layers": [{"type": "linear", "out_features": 24}, {"type": "activation", "function": "relu"},
                                 {"type": "linear", "out_features": 90}]})  # fmt: skip
    with FakeLLMServer(responder=first_answers(mlp)) as srv:
        records = run(llm_run_config(srv.base_url, "population=2", "generations=0"), tmp_path / "on")
        assert len(srv.chat_requests) == 2  # no repair call
    fixed = next(r for r in records if r.slot == 0)
    assert [layer["type"] for layer in fixed.arch["layers"]] == ["flatten", "linear", "activation", "linear"]
    assert fixed.arch["layers"][-1]["out_features"] == 10 and fixed.operator == "llm.init"
    assert fixed.metadata["llm"]["verdicts"] == ["autofixed"]
    assert fixed.metadata["llm"]["autofix"] == [
        "inserted a flatten layer before layer 0",
        "resized the last linear layer from 90 to 10 outputs",
    ]
    acc = open_run(tmp_path / "on").status().llm
    assert acc is not None and acc["answers"] == {"autofixed": 1, "valid": 1}
    assert acc["proposals"]["llm_autofixed"] == 1 and acc["proposals"]["llm_first_time"] == 1
    with FakeLLMServer(responder=first_answers(mlp)) as srv:  # off: the model's raw ability, a repair turn
        run(llm_run_config(srv.base_url, "population=2", "generations=0", "llm.autofix=false"), tmp_path / "off")
        assert len(srv.chat_requests) == 3
    assert [c["meta"]["verdict"] for c in calls(tmp_path / "off")] == ["shape", "valid", "valid"]


def test_refused_slots_never_reach_prompts_as_error_text_and_genius_hides_fallbacks(tmp_path: Path) -> None:
    """A refused slot appears in its later attempts as its layers and a one-word reason, never as error text
    (a small model copied that into "name"); names are not shown at all; fallback networks are not the chain's."""
    bad = json.dumps({"name": "ProposalError: x", "layers": [{"type": "conv2d", "out_channels": 4, "kernel": 9}]})
    responder = first_answers(bad, bad, bad, bad, bad, bad)
    with FakeLLMServer(responder=responder) as srv:
        run(llm_run_config(srv.base_url, "population=3", "generations=0", "llm.max_repairs=0"), tmp_path / "run")
        users = [r.body["messages"][1]["content"] for r in srv.chat_requests]  # type: ignore[index]
    assert not any("ProposalError" in u or "no valid answer" in u for u in users)
    assert any("Refused earlier for this slot (do not answer these again):\n- conv2d 4 k9 (schema)" in u for u in users)
    with FakeLLMServer(responder=lambda body: "no JSON here") as srv:
        config = llm_run_config(srv.base_url, "generations=1", "offspring=2", "llm.max_calls_per_slot=1",
                                method="genius")  # fmt: skip
        records = run(config, tmp_path / "genius")
        prompts = [r.body["messages"][1]["content"] for r in srv.chat_requests]  # type: ignore[index]
    assert all(r.operator.endswith("(llm-fallback)") for r in records)
    assert all("(none yet: propose a first network" in p for p in prompts)  # fallbacks are not "your proposals"


def test_mutate_prompts_name_a_rotating_sparse_energy_target(tmp_path: Path, server: FakeLLMServer) -> None:
    config = llm_run_config(server.base_url, "generations=2", "offspring=4", "evolution.crossover_prob=0")
    records = run(config, tmp_path / "run")
    targets = [r.metadata["llm"]["target"] for r in records if r.operator == "llm.mutate"]
    assert len(targets) == 8 and all(t.startswith("aim the child at an energy of") for t in targets)
    assert len({t.split(" nJ")[0] for t in targets}) >= 2  # rotates over bands
    users = [r.body["messages"][1]["content"] for r in server.chat_requests]  # type: ignore[index]
    assert sum("## Target\naim the child" in u for u in users) >= 8
    assert sum("## Target\nthis slot asks for a tiny network" in u for u in users) == 1  # init slots: size classes
    with FakeLLMServer(responder=ArchResponder()) as srv:
        run(llm_run_config(srv.base_url, "generations=1", "llm.steering=off"), tmp_path / "off")
        assert not any("## Target" in r.body["messages"][1]["content"] for r in srv.chat_requests)  # type: ignore[index]
