"""`uhnas search / status / pareto / prompts`: tiny real runs through the CLI, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from uhnas.cli import app

runner = CliRunner()
TINY = [
    "--backend",
    "gpu-b200-fp16",
    "--population",
    "4",
    "--generations",
    "1",
    "--offspring",
    "2",
    "--epochs",
    "1",
    "--mc",
    "2",
    "--executor",
    "inline",
]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("search", "--config", "examples/digits_mzi.yaml", "--out", out, *TINY, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["front"] and Path(data["pareto_png"]).exists()
    return out


def test_status_reports_the_finished_budget(run_dir: Path):
    data = json.loads(invoke("status", run_dir, "--json").stdout)
    assert data["trials"] == data["budget"] == 6 and data["finished"] is True


def test_pareto_lists_non_dominated_feasible_members(run_dir: Path):
    rows = json.loads(invoke("pareto", run_dir, "--json").stdout)
    assert rows and all(row["hash"] and row["energy_nj"] > 0 for row in rows)
    for a in rows:
        assert not any(
            b["error"] <= a["error"]
            and b["energy_nj"] <= a["energy_nj"]
            and (b["error"], b["energy_nj"]) != (a["error"], a["energy_nj"])
            for b in rows
        )
    table = invoke("pareto", run_dir)
    assert table.exit_code == 0 and "Pareto front" in table.stdout


def test_resume_of_a_finished_run_evaluates_nothing_and_a_larger_budget_continues(run_dir: Path):
    again = invoke("search", "--resume", run_dir, "--json")
    assert again.exit_code == 0, again.output
    more = invoke("search", "--resume", run_dir, "--generations", "2", "--json")
    assert more.exit_code == 0, more.output
    assert json.loads(invoke("status", run_dir, "--json").stdout)["trials"] == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "--config", "examples/digits_mzi.yaml"), "--out DIR is required"),
        (("search", "--config", "examples/absent.yaml", "--out", "{tmp}/x"), "no such configuration file"),
        (("search", "--out", "{tmp}/x", "--method", "bogus", *TINY), "unknown method 'bogus'"),
        (("search", "--out", "{tmp}/x", "--objective", "median", *TINY), "objective"),
        (("search", "--out", "{tmp}/x", "--method", "uhnas", *TINY), "needs a language model"),
        (("search", "--resume", "{tmp}/nothing"), "no run to resume"),
        (("status", "{tmp}/nothing"), "no run here"),
    ],
)
def test_search_errors_are_one_line(tmp_path: Path, args, message):
    result = invoke(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_config_key_names_the_file_and_key(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: nsga2\ntraining:\n  epoch: 3\n")
    result = invoke("search", "--config", bad, "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert f"{bad}: training.epoch: unknown key" in result.stderr


def test_existing_run_is_not_overwritten(run_dir: Path):
    result = invoke("search", "--out", run_dir, *TINY)
    assert result.exit_code == 2 and "already holds a run" in result.stderr


@pytest.mark.parametrize("variant", ["hardware-aware", "generic", "minimal"])
def test_prompts_render_shows_the_backend_only_when_hardware_aware(variant: str):
    result = invoke("prompts", "render", "--config", "examples/digits_mzi.yaml", "--system-prompt", variant, "--json")
    assert result.exit_code == 0, result.output
    system = json.loads(result.stdout)[0]["content"]
    assert ("phase_noise_std" in system) == (variant == "hardware-aware")


def test_llm_search_through_the_cli_then_its_replay_with_the_server_gone(tmp_path: Path):
    """The issue's headline: `uhnas search --method uhnas --llm openai --model M --base-url URL`, then replay."""
    from fake_llm_server import FakeLLMServer, http_error
    from llm_responders import ArchResponder
    from uhnas.llm.cache import CallLog
    from uhnas.store import RunStore

    tiny = [*TINY, "--backend", "ideal"]
    with FakeLLMServer(responder=ArchResponder()) as server:
        server.script(http_error(500), "this is not JSON", http_error(429, headers={"Retry-After": "0"}))
        live = invoke(
            "search",
            "--out",
            tmp_path / "live",
            "--method",
            "uhnas",
            "--llm",
            "openai",
            "--model",
            "fake-model",
            "--base-url",
            server.base_url,
            "--llm-timeout",
            "30",
            "--llm-max-tokens",
            "700",
            *tiny,
            "--json",
        )
        assert live.exit_code == 0, live.output
    # the README's replay line: no --model, no --base-url: the LLM settings come from the recorded run
    replay = invoke(
        "search", "--out", tmp_path / "replay", "--method", "uhnas", "--llm", f"replay:{tmp_path / 'live'}", *tiny,
        "--json",
    )  # fmt: skip
    assert replay.exit_code == 0, replay.output
    stored = RunStore.open(tmp_path / "replay").metadata()["config"]["llm"]
    assert (stored["model"], stored["timeout_s"], stored["max_tokens"]) == ("fake-model", 30.0, 700)
    assert stored["provider"] == f"replay:{tmp_path / 'live'}"

    # accounting: in the search --json summary and in status --json
    summary = json.loads(live.stdout)["summary"]["llm"]
    status = json.loads(invoke("status", tmp_path / "live", "--json").stdout)["llm"]
    assert status == summary
    assert (
        status["proposals"]["slots"] == 6 and status["proposals"]["llm"] == 6 and status["proposals"]["llm_share"] == 1
    )
    assert status["answers"]["malformed"] == 1 and status["answers"]["valid"] == 6
    assert status["live_calls"] == status["calls"] and status["prompt_tokens"] > 0 and status["completion_tokens"] > 0
    assert status["front"]["llm"] == status["front"]["size"] > 0
    replayed = json.loads(invoke("status", tmp_path / "replay", "--json").stdout)["llm"]
    assert replayed["replayed_calls"] == replayed["calls"] == status["calls"] and replayed["live_calls"] == 0
    table = invoke("status", tmp_path / "live")
    assert table.exit_code == 0 and "LLM: " in table.stdout and "proposals by the LLM 6/6" in table.stdout
    shown = invoke(
        "search", "--out", tmp_path / "shown", "--method", "uhnas", "--llm", f"replay:{tmp_path / 'live'}", *tiny
    )  # fmt: skip  (the live display, then the summary line)
    assert shown.exit_code == 0, shown.output
    assert "LLM calls" in shown.stdout and "LLM: " in shown.stdout and "proposals by the LLM 6/6" in shown.stdout

    def trials(out: Path) -> list[tuple]:
        return sorted(
            (r.generation, r.slot, r.hash, r.operator, r.error, r.energy_nj, r.state)
            for r in RunStore.open(out).records()
        )

    assert len(trials(tmp_path / "live")) == 6 and trials(tmp_path / "live") == trials(tmp_path / "replay")
    verdicts = [call.get("meta", {}).get("outcome") for call in CallLog(tmp_path / "live" / "llm.db").calls()]
    assert "invalid" in verdicts and "valid" in verdicts  # the malformed answer was recorded, then repaired


def test_replay_of_a_directory_without_a_recorded_run_says_what_to_pass(tmp_path: Path):
    (tmp_path / "nothing").mkdir()
    result = invoke("search", "--out", tmp_path / "x", "--method", "uhnas", "--llm", f"replay:{tmp_path / 'nothing'}",
                    *TINY)  # fmt: skip
    assert result.exit_code == 2 and "no recorded run configuration" in result.stderr and "--model" in result.stderr
