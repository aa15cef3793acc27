"""LLM client over real HTTP (loopback fake server) through the real openai SDK: faults, cache, replay, budget."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from fake_llm_server import (
    FakeLLMServer,
    closed_port_url,
    drop,
    http_error,
    rate_limited,
    reject_response_format,
    slow,
)
from uhnas.config import LLMSection, config_from_dict
from uhnas.errors import ConfigError
from uhnas.llm.cache import ResponseCache, request_key
from uhnas.llm.client import LLMClient, LLMConfig, PriceTable, retry_after_s
from uhnas.llm.errors import (
    BudgetExceeded,
    CacheMiss,
    LLMError,
    LLMRejected,
    LLMRetriesExhausted,
    LLMUnavailable,
)

KEY_ENV = "UHNAS_TEST_LLM_KEY"
SECRET = "sk-test-SECRET-0123456789abcdef"
SCHEMA = {"type": "object", "properties": {"layers": {"type": "array"}}, "required": ["layers"]}
CLIENT_ONLY = ("backoff_base_s", "backoff_max_s", "schema_strict")  # not user settings: arguments of from_section


def client_config(**settings: Any) -> LLMConfig:
    """Client settings derived, as in a run, from an `llm:` section holding `settings` (a PriceTable as `price`)."""
    tuning = {k: settings.pop(k) for k in CLIENT_ONLY if k in settings}
    price = settings.pop("price", None)
    if price is not None:
        settings["price_prompt_usd_per_mtok"] = price.prompt_usd_per_mtok
        settings["price_completion_usd_per_mtok"] = price.completion_usd_per_mtok
    return LLMConfig.from_section(LLMSection(**settings), **tuning)


def msgs(text: str = "propose a child") -> list[dict[str, str]]:
    """A two-message chat."""
    return [{"role": "system", "content": "You design networks."}, {"role": "user", "content": text}]


def count_calls(path: Path) -> int:
    """Rows in a log file's calls table, read with a short-lived connection."""
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


class SleepRecorder:
    """Injected sleep: records requested waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with a distinctive key in a dedicated env var."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """A fresh fake server per test."""
    with FakeLLMServer(models=("fake-model", "other-model")) as srv:
        yield srv


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., tuple[LLMClient, SleepRecorder]]]:
    """Factory: client on tmp_path/llm.db (or a given path/cache) with recorded sleeps; closes everything."""
    opened: list[tuple[LLMClient, ResponseCache]] = []

    def factory(
        base_url: str, *, cache: ResponseCache | None = None, db: Path | None = None, **overrides: Any
    ) -> tuple[LLMClient, SleepRecorder]:
        settings: dict[str, Any] = {
            "model": "fake-model", "base_url": base_url, "api_key_env": KEY_ENV, "timeout_s": 5,
            "max_retries": 3, "backoff_base_s": 0.5, "backoff_max_s": 8,
        }  # fmt: skip
        settings.update(overrides)
        cache = cache or ResponseCache(db or tmp_path / "llm.db")
        sleep = SleepRecorder()
        client = LLMClient(client_config(**settings), cache, sleep=sleep, rng=random.Random(0))
        opened.append((client, cache))
        return client, sleep

    yield factory
    for client, cache in opened:
        client.close()
        cache.close()


def test_happy_path_sends_config_and_accounts_usage(server: FakeLLMServer, make_client: Any) -> None:
    server.script('{"layers": [1]}')
    price = PriceTable(prompt_usd_per_mtok=2.0, completion_usd_per_mtok=8.0)
    client, sleep = make_client(server.base_url, price=price)
    assert client.check() == ["fake-model", "other-model"]
    r = client.complete(msgs(), purpose="mutate", meta={"parent": "a1"}, seed=7)
    assert (r.text, r.cached, r.attempts, r.finish_reason) == ('{"layers": [1]}', False, 1, "stop")
    assert r.prompt_tokens > 0 and r.completion_tokens == len(r.text) // 4 + 1
    client.complete(msgs("init please"), purpose="init")
    body = server.chat_requests[0].body
    assert body is not None
    assert (body["model"], body["seed"], body["max_tokens"], body["temperature"]) == ("fake-model", 7, 1024, 0.7)
    assert "response_format" not in body  # no schema: plain text
    assert "seed" not in server.chat_requests[1].body  # type: ignore[operator]  # a call without seed sends none
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"
    usage = client.usage
    assert usage.total.calls == 2 and usage.total.failed == 0 and not sleep.waits
    assert usage.by_purpose["mutate"].prompt_tokens == r.prompt_tokens
    assert usage.total.total_tokens == sum(t.total_tokens for t in usage.by_purpose.values())
    expected = price.cost(usage.total.prompt_tokens, usage.total.completion_tokens)
    assert usage.cost_usd == pytest.approx(expected) and usage.to_dict()["by_purpose"]["init"]["calls"] == 1
    logged = client.log.call(r.call_id)
    assert logged["purpose"] == "mutate" and logged["meta"] == {"parent": "a1"}
    assert logged["request"]["messages"] == msgs() and logged["text"] == r.text
    client.log.annotate(r.call_id, candidate="c7", valid=True)
    assert client.log.call(r.call_id)["meta"] == {"parent": "a1", "candidate": "c7", "valid": True}


def test_json_schema_sent_in_auto_mode(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url)
    r = client.complete(msgs(), schema=SCHEMA, purpose="mutate")
    fmt = server.chat_requests[0].body["response_format"]  # type: ignore[index]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "architecture", "schema": SCHEMA, "strict": False}}
    assert r.mode == "json_schema" and client.schema_supported


def test_json_object_mode(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url, structured_output="json_object")
    assert client.complete(msgs(), schema=SCHEMA, purpose="mutate").mode == "json_object"
    assert server.chat_requests[0].body["response_format"] == {"type": "json_object"}  # type: ignore[index]


def test_auto_falls_back_to_text_when_schema_rejected_and_remembers(make_client: Any) -> None:
    with FakeLLMServer(reject_json_schema=True) as srv:
        client, sleep = make_client(srv.base_url)
        first = client.complete(msgs(), schema=SCHEMA, purpose="mutate")
        second = client.complete(msgs("again"), schema=SCHEMA, purpose="mutate")
        formats = [(r.body or {}).get("response_format", {}).get("type") for r in srv.chat_requests]
    assert formats == ["json_schema", None, None]  # rejected once, then plain text for the whole session
    assert (first.mode, first.attempts, second.attempts) == ("text", 2, 1)
    assert not client.schema_supported and not sleep.waits


def test_explicit_json_schema_rejection_is_not_retried(server: FakeLLMServer, make_client: Any) -> None:
    server.script(reject_response_format())
    client, _ = make_client(server.base_url, structured_output="json_schema")
    with pytest.raises(LLMRejected, match=r"HTTP 400.*structured_output") as info:
        client.complete(msgs(), schema=SCHEMA, purpose="mutate")
    assert info.value.status_code == 400 and len(server.chat_requests) == 1


@pytest.mark.parametrize(
    ("step", "expected_wait"),
    [
        (rate_limited("3"), 3.0),
        (rate_limited(retry_after_ms=1500), 1.5),
        (rate_limited("100"), 8.0),  # capped at backoff_max_s
    ],
)
def test_429_honours_retry_after(server: FakeLLMServer, make_client: Any, step: Any, expected_wait: float) -> None:
    server.script(step, "ok")
    client, sleep = make_client(server.base_url)
    r = client.complete(msgs(), purpose="mutate")
    assert (r.text, r.attempts) == ("ok", 2) and sleep.waits == [expected_wait]


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 4, usegmt=True)
    assert retry_after_s({"Retry-After": date}, now=lambda: now) == pytest.approx(4.0)
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25


def test_5xx_retried_with_capped_full_jitter_backoff(server: FakeLLMServer, make_client: Any) -> None:
    server.script(http_error(500), http_error(502), http_error(503), "done")
    client, sleep = make_client(server.base_url)
    r = client.complete(msgs(), purpose="mutate")
    assert (r.text, r.attempts) == ("done", 4)
    assert len(sleep.waits) == 3 and all(0 <= w <= 0.5 * 2**i for i, w in enumerate(sleep.waits))
    assert client.usage.total.calls == 1 and client.usage.total.failed == 0


def test_dropped_connection_retried(server: FakeLLMServer, make_client: Any) -> None:
    server.script(drop(), "after drop")
    client, sleep = make_client(server.base_url)
    r = client.complete(msgs(), purpose="mutate")
    assert (r.text, r.attempts, len(sleep.waits)) == ("after drop", 2, 1)


def test_slow_answer_times_out_and_is_retried(server: FakeLLMServer, make_client: Any) -> None:
    server.script(slow("too late", 2.0), "in time")
    client, _ = make_client(server.base_url, timeout_s=0.3)
    t0 = time.monotonic()
    r = client.complete(msgs(), purpose="mutate")
    assert (r.text, r.attempts) == ("in time", 2) and time.monotonic() - t0 < 1.5


def test_retries_exhausted_one_line_and_logged(server: FakeLLMServer, make_client: Any) -> None:
    server.script(*[http_error(503, "overloaded\nplease wait")] * 3)
    client, sleep = make_client(server.base_url, max_retries=2)
    with pytest.raises(LLMRetriesExhausted) as info:
        client.complete(msgs(), purpose="reflect")
    message = str(info.value)
    assert "\n" not in message and "after 3 attempts" in message and "HTTP 503: overloaded please wait" in message
    assert server.base_url in message and "reflect" in message and len(sleep.waits) == 2
    logged = client.log.call(info.value.call_id)  # type: ignore[arg-type]
    assert logged["error_type"] == "LLMRetriesExhausted" and logged["attempts"] == 3
    assert client.usage.by_purpose["reflect"].failed == 1


def test_other_4xx_not_retried(server: FakeLLMServer, make_client: Any) -> None:
    server.script(http_error(401, "bad key"), "never")
    client, sleep = make_client(server.base_url)
    with pytest.raises(LLMRejected, match=r"rejected by .* \(HTTP 401\): bad key"):
        client.complete(msgs(), purpose="mutate")
    assert len(server.chat_requests) == 1 and not sleep.waits


def test_max_completion_tokens_adaptation(server: FakeLLMServer, make_client: Any) -> None:
    server.script(http_error(400, "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."), "ok")
    client, _ = make_client(server.base_url, max_tokens=99)
    assert client.complete(msgs(), purpose="mutate").text == "ok"
    bodies = [r.body or {} for r in server.chat_requests]
    assert bodies[0]["max_tokens"] == 99 and bodies[1]["max_completion_tokens"] == 99 and "max_tokens" not in bodies[1]


def test_unreachable_endpoint_check(make_client: Any) -> None:
    url = closed_port_url()
    client, _ = make_client(url)
    with pytest.raises(LLMUnavailable) as info:
        client.check()
    message = str(info.value)
    assert message.startswith(f"cannot reach LLM endpoint {url}: ") and "\n" not in message
    assert "refused" in message.lower()


def test_unknown_model_check(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url, model="gpt-9")
    with pytest.raises(LLMUnavailable) as info:
        client.check()
    assert str(info.value) == f"model 'gpt-9' not served by {server.base_url}; available: fake-model, other-model"


def test_missing_key_allowed_for_local_endpoint(server: FakeLLMServer, make_client: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv(KEY_ENV)
    client, _ = make_client(server.base_url)
    client.complete(msgs(), purpose="mutate")
    assert server.chat_requests[0].headers["authorization"] == "Bearer not-needed"


def test_budget_then_resume_with_larger_budget(server: FakeLLMServer, make_client: Any, tmp_path: Path) -> None:
    client, _ = make_client(server.base_url, budget_tokens=10)
    first = client.complete(msgs(), purpose="mutate")
    spent = first.prompt_tokens + first.completion_tokens
    assert spent >= 10
    with pytest.raises(BudgetExceeded) as info:
        client.complete(msgs("next"), purpose="mutate")
    assert str(info.value) == (
        f"LLM budget of 10 tokens reached (spent {spent}); resume with a larger --llm-budget-tokens"
    )
    assert len(server.chat_requests) == 1
    client.cache.close()
    resumed, _ = make_client(server.base_url, budget_tokens=10 * spent)
    assert resumed.usage.total.total_tokens == spent  # restored from the call log
    resumed.complete(msgs("next"), purpose="mutate")
    assert resumed.usage.total.calls == 2 and len(server.chat_requests) == 2


def test_usd_budget(server: FakeLLMServer, make_client: Any) -> None:
    price = PriceTable(prompt_usd_per_mtok=1e6, completion_usd_per_mtok=1e6)  # $1 per token
    client, _ = make_client(server.base_url, price=price, budget_usd=5.0)
    client.complete(msgs(), purpose="mutate")
    with pytest.raises(BudgetExceeded, match=r"LLM budget of \$5 reached .*--llm-budget-usd"):
        client.complete(msgs("more"), purpose="mutate")
    with pytest.raises(ConfigError, match="run.yaml: llm: .*budget_usd needs price_prompt_usd_per_mtok"):
        config_from_dict({"llm": {"model": "m", "budget_usd": 1.0}}, source="run.yaml")
    with pytest.raises(ConfigError, match="run.yaml: llm: .*set both"):
        config_from_dict({"llm": {"model": "m", "price_prompt_usd_per_mtok": 1.0}}, source="run.yaml")


def test_cache_hit_does_not_reach_server(server: FakeLLMServer, make_client: Any, tmp_path: Path) -> None:
    client, _ = make_client(server.base_url)
    live = client.complete(msgs(), schema=SCHEMA, purpose="mutate")
    client.cache.close()
    again, _ = make_client(server.base_url)  # new session on the same file
    hit = again.complete(msgs(), schema=SCHEMA, purpose="mutate")
    assert len(server.chat_requests) == 1
    assert (hit.text, hit.cached, hit.attempts, hit.mode) == (live.text, True, 0, "json_schema")
    usage = again.usage
    assert usage.total.calls == 1 and usage.total.replayed_calls == 1
    assert usage.total.replayed_tokens == live.prompt_tokens + live.completion_tokens
    assert usage.total.total_tokens == live.prompt_tokens + live.completion_tokens  # hits spend nothing


def test_occurrence_indexed_repeats(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url)
    a, b = (client.complete(msgs(), purpose="mutate") for _ in range(2))
    assert (a.text, b.text) == ('{"n": 0}', '{"n": 1}') and not a.cached and not b.cached  # fresh answer live
    client.cache.close()
    again, _ = make_client(server.base_url)
    replayed = [again.complete(msgs(), purpose="mutate") for _ in range(3)]
    assert [r.text for r in replayed] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    assert [r.cached for r in replayed] == [True, True, False] and len(server.chat_requests) == 3


def test_replay_from_other_run_without_network(make_client: Any, tmp_path: Path) -> None:
    original_db, replay_db = tmp_path / "orig" / "llm.db", tmp_path / "replay" / "llm.db"
    plan = [("init", "a"), ("mutate", "b"), ("mutate", "b"), ("reflect", "c"), ("mutate", "d")]
    with FakeLLMServer() as srv:
        srv.script("x0", "x1", "x2", http_error(400, "context too long"), "x4")
        recorder, _ = make_client(srv.base_url, db=original_db)
        answers: list[str | None] = []
        for purpose, text in plan:
            try:
                answers.append(recorder.complete(msgs(text), purpose=purpose).text)
            except LLMRejected:
                answers.append(None)
        recorder.cache.close()
    assert answers == ["x0", "x1", "x2", None, "x4"]
    rows_before = count_calls(original_db)
    cache = ResponseCache(replay_db, mode="replay", source=original_db)
    replayer, _ = make_client(closed_port_url(), cache=cache)
    assert replayer.check() == []  # replay never touches the network
    replayed: list[str | None] = []
    for purpose, text in plan:
        try:
            replayed.append(replayer.complete(msgs(text), purpose=purpose).text)
        except LLMRejected as exc:  # the recorded failure is reproduced, too
            assert "context too long" in str(exc) and exc.status_code == 400
            replayed.append(None)
    assert replayed == answers
    with pytest.raises(CacheMiss) as info:  # every recorded answer was replayed: the original stopped here
        replayer.complete(msgs("something new"), purpose="mutate")
    assert str(info.value).startswith("no cached answer for mutate call #4 (key ")
    assert "the original run stopped here: all 5 of its recorded answers were replayed" in str(info.value)
    assert "diverged" not in str(info.value)
    usage = replayer.usage
    assert usage.total.calls == 0 and usage.total.total_tokens == 0 and usage.total.replayed_calls == 6
    assert count_calls(original_db) == rows_before  # the source run's file is only read
    assert [c["source"] for c in replayer.log.calls()] == ["replay"] * 6

    early, _ = make_client(closed_port_url(), cache=ResponseCache(tmp_path / "early" / "llm.db", mode="replay",
                                                                  source=original_db))  # fmt: skip
    early.complete(msgs("a"), purpose="init")
    with pytest.raises(CacheMiss) as info:  # a request the original never made while answers remain: diverged
        early.complete(msgs("something new"), purpose="mutate")
    assert str(info.value).endswith(
        "the replayed run diverged from the original (1 of its 5 recorded answers replayed)"
    )


def test_replay_of_own_file_and_missing_source(tmp_path: Path, make_client: Any) -> None:
    with FakeLLMServer() as srv:
        recorder, _ = make_client(srv.base_url)
        text = recorder.complete(msgs(), purpose="init").text
        recorder.cache.close()
    replayer, _ = make_client(closed_port_url(), cache=ResponseCache(tmp_path / "llm.db", mode="replay"))
    assert replayer.complete(msgs(), purpose="init").text == text
    with pytest.raises(LLMError, match="does not exist"):
        ResponseCache(tmp_path / "new.db", mode="replay", source=tmp_path / "absent.db")


def test_readwrite_retries_recorded_failure_live_and_off_mode_bypasses(
    server: FakeLLMServer, make_client: Any, tmp_path: Path
) -> None:
    server.script(http_error(400, "transient nonsense"), "recovered", "second", "third")
    client, _ = make_client(server.base_url)
    with pytest.raises(LLMRejected):
        client.complete(msgs(), purpose="mutate")
    client.cache.close()
    again, _ = make_client(server.base_url)  # readwrite: a recorded failure is not served, the call goes live
    assert again.complete(msgs(), purpose="mutate").text == "recovered"
    again.cache.close()
    third, _ = make_client(server.base_url)
    assert third.complete(msgs(), purpose="mutate").cached  # the live answer replaced the failure
    third.cache.close()
    off, _ = make_client(server.base_url, cache=ResponseCache(tmp_path / "llm.db", mode="off"))
    assert [off.complete(msgs(), purpose="mutate").text for _ in range(2)] == ["second", "third"]
    assert len(server.chat_requests) == 4


def test_request_key_covers_sampling_and_schema(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url)
    client.complete(msgs(), purpose="mutate")
    client.complete(msgs(), schema=SCHEMA, purpose="mutate")
    client.complete(msgs(), purpose="mutate", seed=1)
    client.complete(msgs(), purpose="mutate", seed=2)
    keys = {c["key"] for c in client.log.calls()}
    assert len(keys) == 4 and all(c["occurrence"] == 0 for c in client.log.calls())
    assert [c["request"]["seed"] for c in client.log.calls()] == [None, None, 1, 2]
    assert [r.body.get("seed") for r in server.chat_requests] == [None, None, 1, 2]  # type: ignore[union-attr]
    assert request_key({"a": 1, "b": [1, 2]}) == request_key({"b": [1, 2], "a": 1})


def test_per_call_seeds_leave_the_shared_config_alone(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url)
    config = client.config
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda i: client.complete(msgs("same"), purpose="mutate", seed=i), range(8)))
    assert client.config is config and not hasattr(config, "seed")
    sent = sorted(r.body["seed"] for r in server.chat_requests)  # type: ignore[index]
    assert sent == list(range(8)) and len({r.call_id for r in replies}) == 8
    by_call = {c["id"]: c["request"]["seed"] for c in client.log.calls()}
    assert sorted(by_call.values()) == list(range(8))


def test_client_settings_come_from_the_llm_section_with_no_defaults_of_their_own() -> None:
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(LLMConfig))  # fmt: skip
    section = LLMSection(model="m")
    config = LLMConfig.from_section(section)
    shared = {f.name for f in dataclasses.fields(LLMConfig)} & set(LLMSection.model_fields)
    assert shared >= {"model", "temperature", "max_tokens", "timeout_s", "max_retries", "structured_output"}
    assert all(getattr(config, name) == getattr(section, name) for name in shared)
    assert config.price is None and config.schema_strict is False
    priced = client_config(model="m", price=PriceTable(1.0, 2.0), budget_usd=3.0)
    assert priced.price == PriceTable(prompt_usd_per_mtok=1.0, completion_usd_per_mtok=2.0) and priced.budget_usd == 3


def test_api_key_never_stored(server: FakeLLMServer, make_client: Any, tmp_path: Path) -> None:
    server.script("fine", http_error(401, f"Incorrect API key provided: {SECRET}"))
    client, _ = make_client(server.base_url)
    client.complete(msgs(), purpose="mutate", meta={"note": "ok"})
    with pytest.raises(LLMRejected) as info:
        client.complete(msgs("b"), purpose="mutate")
    assert SECRET not in str(info.value) and "***" in str(info.value)
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was really sent
    client.cache.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("llm.db")]
    assert files and all(SECRET.encode() not in p.read_bytes() for p in files)
    config_json = json.dumps(dataclasses.asdict(client.config))
    assert SECRET not in config_json and KEY_ENV in config_json


def test_concurrent_calls_are_all_logged_and_counted(server: FakeLLMServer, make_client: Any) -> None:
    client, _ = make_client(server.base_url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda i: client.complete(msgs(f"child {i % 5}"), purpose="mutate"), range(20)))
    assert len({r.call_id for r in replies}) == 20 and len({r.text for r in replies}) == 20
    assert client.usage.total.calls == 20 and len(client.log.calls()) == 20
    assert sorted(c["occurrence"] for c in client.log.calls()) == sorted(list(range(4)) * 5)


def test_config_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError):
        LLMSection(model="m", api_key="sk-should-not-be-here")  # type: ignore[call-arg]
    assert not any("key" in f.name and f.name != "api_key_env" for f in dataclasses.fields(LLMConfig))
