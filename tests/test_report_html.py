"""`uhnas report`: the self-contained HTML page of a run and of a study, and that model- or user-written text in
it is escaped (a hostile LLM run: `<script>` tags, event-handler attributes, a JSON-block breakout, injection).

The runs are small and use the synthetic executor (no training); the browser checks are in
test_report_browser.py.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fake_llm_server import FakeLLMServer
from llm_responders import INJECTION, ArchResponder, FaultPlan, SyntheticExecutor, llm_run_config, synthetic_job
from uhnas.cli import app
from uhnas.config import load_config
from uhnas.records import feasible_front
from uhnas.search.engine import JOB_ID_STRIDE, run_search
from uhnas.search.jobs import InlineExecutor, Job, JobResult
from uhnas.store import RunStore, TrialRecord, open_run

runner = CliRunner()
BREAKOUT = '</script><script>alert("breakout")</script>'
HANDLER = "<img src=x onerror=\"alert('img')\">"
SVG_PAYLOAD = "<svg onload=alert('svg')>"
HOSTILE_TEXT = (BREAKOUT, HANDLER, SVG_PAYLOAD, "<script>alert('pwned')</script>")
STUDY = """\
name: tiny
base:
  dataset: digits
  population: 4
  generations: 1
  offspring: 2
  mc: 2
  training: {epochs: 1}
  executor: {kind: inline}
grid:
  backend: [ideal, gpu-b200-fp16]
  method: [nsga2, random]
  seed: [0, 1]
"""


# ----------------------------------------------------------------------------------------- runs to report


def flaky_job(job: Job) -> JobResult:
    """Synthetic scores; in generation 1 slot 0 crashes, slot 1 times out and slot 2 violates a constraint."""
    generation, slot = divmod(job.job_id, JOB_ID_STRIDE)
    if (generation, slot) == (1, 0):
        return JobResult(job.job_id, None, True, "RuntimeError: candidate exploded", 0.01)
    if (generation, slot) == (1, 1):
        return JobResult(job.job_id, None, True, "timed out after 900 s", 900.0)
    result = synthetic_job(job)
    if (generation, slot) in ((1, 2), (0, 3)) and result.evaluation is not None:
        violation = {"constraint": "mesh_size", "limit": 64.0, "actual": 96.0, "unit": "ports", "amount": 0.5}
        result.evaluation.update(violations=[violation], total_violation=0.5)
    return result


def make_run(out: Path) -> Path:
    """A conventional (nsga2) run of 6 + 2 x 4 candidates: two failed, some infeasible."""
    config = load_config(
        None,
        ["backend=ideal", "population=6", "generations=2", "offspring=4", "training.epochs=1", "mc=2",
         "executor.kind=inline", "method=nsga2"],
    )  # fmt: skip
    run_search(config, out, executor=InlineExecutor(job_fn=flaky_job))
    return out


def make_hostile_run(out: Path) -> Path:
    """An LLM run whose model answers with HTML, scripts and injection (names, rationales, knowledge base, invalid
    answers), plus records, a config string and a backend card written into the store with more payloads."""
    faults = {1: "malformed", 2: "unknown_type", 3: "prose", 5: "schema", 6: "shape", 8: "duplicate"}
    with FakeLLMServer(responder=FaultPlan(ArchResponder(hostile=True), faults)) as srv:
        config = llm_run_config(srv.base_url, "generations=2", "offspring=3", "llm.timeout_s=5")
        run_search(config, out, executor=SyntheticExecutor())
    store = RunStore.open(out)
    best = feasible_front(store.records())[0]
    arch = {**(best.arch or {}), "name": BREAKOUT + HANDLER}
    arch["layers"] = [*arch["layers"][:-1], {"type": "dropout", "p": 0.1}, arch["layers"][-1]]
    store.add(replace(best, number=-1, slot=90, arch=arch, hash="f" * 16, rationale=f"{INJECTION} {BREAKOUT}"))
    store.add(TrialRecord(generation=2, slot=91, state="FAIL", operator=SVG_PAYLOAD, reason=f"{HANDLER}: {BREAKOUT}",
                          rejected=[BREAKOUT, HANDLER]))  # fmt: skip
    meta = store.metadata()
    store.set("config", {**meta["config"], "backend_overrides": [SVG_PAYLOAD]})
    card = dict(meta["backend_card"])
    card["description"] = f"{card['description']} {BREAKOUT}"
    card["constants"] = {**card["constants"], HANDLER: {"value": 1, "unit": SVG_PAYLOAD, "source": BREAKOUT}}
    store.set("backend_card", card)
    return out


def make_study(out: Path) -> Path:
    from uhnas.study.pool import inline_pool
    from uhnas.study.runner import run_study

    spec = out.parent / "tiny.yaml"
    spec.write_text(STUDY, encoding="utf-8")
    pool = inline_pool(synthetic_job)
    try:
        result = run_study(spec, out, pool=pool)
    finally:
        pool.close()
    assert not result.failed
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hostile_run(tmp_path_factory.mktemp("report") / "hostile")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study(tmp_path_factory.mktemp("report") / "study")


def report(directory: Path, *args: Any) -> tuple[dict[str, Any], str]:
    result = runner.invoke(app, ["report", str(directory), *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    return data, Path(data["html"]).read_text(encoding="utf-8")


def check_self_contained(page: str) -> None:
    """Nothing loads from anywhere: no src/href to another document, no stylesheet link, CSP allows no network."""
    assert re.findall(r"<(?:link|iframe|object|embed|img|audio|video|base)\b", page, re.IGNORECASE) == []
    assert re.findall(r"<[a-z][^<>]*\ssrc\s*=", page, re.IGNORECASE) == []
    hrefs = re.findall(r'\bhref="([^"]*)"', page)
    assert hrefs and all(h.startswith("#") for h in hrefs), [h for h in hrefs if not h.startswith("#")][:5]
    assert "default-src 'none'" in page and "@import" not in page
    assert len(re.findall(r"<script\b", page)) == 2  # the JSON data block and the page's own script


# ----------------------------------------------------------------------------------------- tests


def test_run_report_shows_every_section_and_writes_one_self_contained_file(run_dir: Path):
    t0 = time.perf_counter()
    data, page = report(run_dir)
    print(f"run report: {data['bytes']} bytes in {time.perf_counter() - t0:.2f} s")
    assert data["kind"] == "run" and data["html"] == str(run_dir / "report.html") and data["figures"] == 4
    check_self_contained(page)
    records = open_run(run_dir).records()
    failed = [r for r in records if r.failed]
    infeasible = [r for r in records if not r.failed and not r.feasible]
    assert len(failed) == 2 and infeasible
    for section in ("summary", "pareto", "hypervolume", "energy", "accuracy", "architectures", "failed", "candidates"):
        assert f'<section id="{section}">' in page, section
    assert page.count('<svg class="fig"') == 4
    for r in records:  # every candidate has its row, every evaluated one a hover target in the Pareto plot
        assert f'id="cand-{r.number}"' in page
    assert page.count('class="pt"') == 2 * (len(records) - len(failed))  # Pareto plot + clean-vs-noisy plot
    assert "candidate exploded" in page and "timed out after 900 s" in page
    assert "RuntimeError" in page and "timed out after N s" in page  # failures grouped by kind
    assert "infeasible (" in page  # the legend entry of the infeasible markers
    for member in feasible_front(records):
        assert f'id="arch-{member.number}"' in page
    assert '<div class="blk input">' in page and "1x8x8" in page  # input shape from uhnas.arch.analyze
    assert 'id="llm"' not in page  # no LLM section for a conventional method
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # the inline figures' ids are prefixed: no clash between figures


def test_report_out_option_and_errors(run_dir: Path, tmp_path: Path):
    data, _ = report(run_dir, "--out", tmp_path / "sub" / "page.html")
    assert data["html"] == str(tmp_path / "sub" / "page.html") and (tmp_path / "sub" / "page.html").is_file()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such directory" in result.output
    plain = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "p.html")])
    assert plain.exit_code == 0 and "run report:" in plain.output


def test_llm_run_report_shows_calls_verdicts_knowledge_and_prompts(hostile_dir: Path):
    _, page = report(hostile_dir)
    assert '<section id="llm">' in page
    for heading in ("Calls, tokens and cost by operator", "Answers by verdict", "Knowledge base by generation",
                    "Prompts and answers to inspect"):  # fmt: skip
        assert heading in page
    for verdict in ("valid", "malformed", "schema", "shape", "duplicate"):
        assert f'<th class="n">{verdict}</th>' in page, verdict
    for operator in ("init", "mutate", "crossover", "reflect"):
        assert f"<tr><td>{operator}</td>" in page, operator
    assert page.count("<summary>generation ") >= 3  # the knowledge base of generations 0, 1, 2
    assert "Hidden widths above 64 cost energy without accuracy gains." in page
    assert '<div class="role">system</div>' in page and '<div class="role">answer</div>' in page


def test_hostile_text_is_escaped_everywhere(hostile_dir: Path):
    _, page = report(hostile_dir)
    check_self_contained(page)
    for payload in HOSTILE_TEXT:  # never verbatim: neither in the HTML nor in the JSON block nor in a figure
        assert payload not in page, payload
    assert re.findall(r"<[a-z][^<>]*\son[a-z]+\s*=", page, re.IGNORECASE) == []  # no event-handler attribute at all
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page  # shown as text (knowledge base, answers)
    assert "&lt;img src=x onerror=" in page  # the model's architecture names, as text
    assert INJECTION in page  # injection text is shown, as data
    block = re.search(r'<script type="application/json" id="uhnas-data">(.*?)</script>', page, re.DOTALL)
    assert block is not None
    payload = json.loads(block.group(1))
    names = {c["name"] for c in payload["candidates"]}
    assert BREAKOUT + HANDLER in names  # the JSON data survives intact (escaped as \u003c...), not cut short
    assert "<" not in block.group(1) and ">" not in block.group(1)


def test_study_report_has_the_study_reports_figures_and_tables(study_dir: Path):
    from uhnas.study.report import build_report

    t0 = time.perf_counter()
    data, page = report(study_dir)
    print(f"study report: {data['bytes']} bytes in {time.perf_counter() - t0:.2f} s")
    assert data["kind"] == "study" and data["figures"] == 3
    check_self_contained(page)
    assert page.count('<svg class="fig"') == 3
    built = build_report(study_dir)
    for title in ("Hypervolume by method (over seeds)", "Pairwise tests of hypervolume (two-sided, Holm-corrected)",
                  "Diversity and robustness of the fronts (medians over seeds)",
                  "Clean vs noisy accuracy (every evaluated candidate)", "Cells"):  # fmt: skip
        assert f">{title}</h" in page, title
    for row in built["hypervolume"]:  # the same numbers as `uhnas study report` (its formatting)
        assert f'<td class="n">{row["median"]:.3f}</td>' in page
    for cell in built["cell_metrics"]:
        assert f"<td>{cell['cell']}</td>" in page
    assert not (study_dir / "report").exists()  # the page writes nothing but itself
