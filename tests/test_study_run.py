"""A smoke study end to end through the CLI: shared pool, a failing cell, status, report recomputed from stores."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
from scipy.stats import kendalltau, spearmanr, wilcoxon
from typer.testing import CliRunner

from uhnas.cli import app
from uhnas.config import config_from_dict
from uhnas.records import front_hypervolume
from uhnas.search.engine import run_search
from uhnas.search.jobs import InlineExecutor
from uhnas.store import open_run

runner = CliRunner()
SMOKE = "examples/studies/smoke.yaml"
REDUCED = [
    "--set",
    "generations=1",
    "--set",
    "grid.backend=[ideal]",
    "--set",
    "grid.method=[nsga2, random, no-such-method]",
    "--workers",
    "2",
]
GOOD_CELLS = ["ideal_nsga2_s0", "ideal_nsga2_s1", "ideal_random_s0", "ideal_random_s1"]
BAD_CELLS = ["ideal_no-such-method_s0", "ideal_no-such-method_s1"]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("studies") / "smoke"
    result = invoke("study", "run", SMOKE, "--out", out, *REDUCED, "--json")
    assert result.exit_code == 1, result.output  # two cells fail (unknown method); the others finish
    return out, json.loads(result.stdout)


def test_every_good_cell_runs_to_its_budget_and_bad_ones_are_reported(study):
    out, data = study
    states = {c["id"]: c["state"] for c in data["cells"]}
    assert states == {**{c: "done" for c in GOOD_CELLS}, **{c: "failed" for c in BAD_CELLS}}
    assert sorted(data["failed"]) == sorted(BAD_CELLS)
    bad = next(c for c in data["cells"] if c["id"] == BAD_CELLS[0])
    assert "unknown method 'no-such-method'" in bad["error"]
    for cell in GOOD_CELLS:  # each cell is an ordinary run directory
        status = json.loads(invoke("status", out / "cells" / cell, "--json").stdout)
        assert status["trials"] == status["budget"] == 6 and status["finished"]
        assert invoke("pareto", out / "cells" / cell, "--json").exit_code == 0


def test_a_cell_equals_the_same_run_alone(study, tmp_path: Path):
    out, _ = study
    stored = open_run(out / "cells" / "ideal_nsga2_s1")
    config = config_from_dict(stored.metadata()["config"])
    alone = run_search(config, tmp_path / "alone", executor=InlineExecutor())
    key = lambda r: (r.generation, r.slot, r.hash, r.state, r.error, r.energy_nj)  # noqa: E731
    assert [key(r) for r in sorted(stored.records(), key=lambda r: (r.generation, r.slot))] == [
        key(r) for r in alone.records
    ]


def test_status_counts_cells_and_evaluations(study):
    out, _ = study
    data = json.loads(invoke("study", "status", out, "--json").stdout)
    assert data["counts"]["done"] == 4 and data["counts"]["failed"] == 2
    assert data["evaluations"] == 24 and data["budget"] == 36 and data["runner"] is None
    text = invoke("study", "status", out)
    assert text.exit_code == 0 and "4 done, 2 failed" in text.output


def test_resume_leaves_finished_cells_untouched(study):
    out, _ = study
    db = out / "cells" / GOOD_CELLS[0] / "study.db"
    before = (db.stat().st_mtime_ns, [r.to_dict() for r in open_run(db.parent).records()])
    result = invoke("study", "run", "--resume", out, "--workers", "1", "--json")
    assert result.exit_code == 1  # the unknown method still fails
    states = {c["id"]: c["state"] for c in json.loads(result.stdout)["cells"]}
    assert all(states[c] == "skipped" for c in GOOD_CELLS) and all(states[c] == "failed" for c in BAD_CELLS)
    assert (db.stat().st_mtime_ns, [r.to_dict() for r in open_run(db.parent).records()]) == before


def test_report_numbers_equal_those_recomputed_from_the_stores(study):
    out, _ = study
    result = invoke("study", "report", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    hv: dict[tuple[str, int], float] = {}
    pooled: list[tuple[float, float]] = []
    for cell in GOOD_CELLS:
        store = open_run(out / "cells" / cell)
        records = store.records()
        meta = store.metadata()
        hv[(meta["config"]["method"], meta["config"]["seed"])] = front_hypervolume(
            records, meta["hv_reference"]["point"]
        )
        pooled += [(r.evaluation["accuracy"], r.evaluation["noisy_accuracy"]["mean"]) for r in records if r.feasible]
    by_cell = {row["cell"]: row["hypervolume"] for row in report["cell_metrics"]}
    for cell in GOOD_CELLS:
        method, seed = cell.split("_")[1], int(cell.split("_s")[-1])
        assert by_cell[cell] == pytest.approx(hv[(method, seed)], abs=1e-12)
    rows = {row["method"]: row for row in report["hypervolume"]}
    for method in ("nsga2", "random"):
        values = [hv[(method, 0)], hv[(method, 1)]]
        assert rows[method]["median"] == pytest.approx(statistics.median(values))
        assert (rows[method]["min"], rows[method]["max"]) == pytest.approx((min(values), max(values)))
    (test,) = report["hypervolume_tests"]
    assert test["test"] == "wilcoxon"  # both methods ran seeds 0 and 1: paired
    x, y = [hv[("nsga2", s)] for s in (0, 1)], [hv[("random", s)] for s in (0, 1)]
    expected_p = 1.0 if x == y else wilcoxon(x, y).pvalue
    assert test["p"] == pytest.approx(expected_p) and test["p_holm"] == pytest.approx(expected_p)
    (noisy,) = report["clean_vs_noisy"]
    assert noisy["candidates"] == len(pooled)
    clean, mean = [c for c, _ in pooled], [n for _, n in pooled]
    if len(set(clean)) > 1 and len(set(mean)) > 1:
        assert noisy["spearman"] == pytest.approx(spearmanr(clean, mean).statistic)
        assert noisy["kendall"] == pytest.approx(kendalltau(clean, mean).statistic)
    folder = out / "report"
    for name in ("fronts_by_backend", "hv_vs_evaluations", "hv_by_method"):
        assert (folder / f"{name}.png").stat().st_size > 0 and (folder / f"{name}.svg").stat().st_size > 0
    with (folder / "hypervolume.csv").open(encoding="utf-8") as handle:
        table = {row["method"]: float(row["median"]) for row in csv.DictReader(handle)}
    assert table == pytest.approx({m: rows[m]["median"] for m in rows})
    assert json.loads((folder / "report.json").read_text())["hypervolume"] == report["hypervolume"]
    fronts = {row["method"]: row for row in report["fronts"]}  # one backend: a colour per method
    assert set(fronts) == {"nsga2", "random"}
    for method, front in fronts.items():
        assert front["surfaces"]["best"] and front["surfaces"]["worst"] and front["best_front"]
        assert front["best_cell"] == max((c for c in GOOD_CELLS if f"_{method}_" in c), key=lambda c: by_cell[c])
    text = invoke("study", "report", out)
    assert text.exit_code == 0 and "Hypervolume by method" in text.output


def test_an_llm_endpoint_that_is_down_fails_its_cells_and_the_others_go_on(tmp_path: Path):
    study = tmp_path / "llm.yaml"
    study.write_text(
        """\
base:
  dataset: digits
  backend: ideal
  population: 4
  generations: 0
  mc: 2
  training: {epochs: 1}
  llm: {model: m, base_url: "http://127.0.0.1:9/v1", max_retries: 0, timeout_s: 2}
grid:
  method: [uhnas, nsga2]
""",
        encoding="utf-8",
    )
    result = invoke("study", "run", study, "--out", tmp_path / "out", "--executor", "inline", "--json")
    assert result.exit_code == 1
    cells = {c["id"]: c for c in json.loads(result.stdout)["cells"]}
    assert cells["nsga2"]["state"] == "done" and cells["nsga2"]["evaluations"] == 4
    assert cells["uhnas"]["state"] == "failed" and "cannot reach LLM endpoint" in cells["uhnas"]["error"]
    failure = json.loads((tmp_path / "out" / "failures" / "uhnas.json").read_text())
    assert failure["kind"] == "error" and "cannot reach LLM endpoint" in failure["error"]


def test_unfinished_cells_are_left_out_of_final_hypervolumes_fronts_and_diversity(study, tmp_path: Path):
    """A report on a study in progress: a cell short of its budget has no final hypervolume, so it is not in the
    HV tables, tests, fronts or diversity; its candidates still count for clean vs noisy."""
    out, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    open_run(copy / "cells" / "ideal_random_s1").set("finished", False)
    full = json.loads(invoke("study", "report", out, "--json").stdout)
    result = invoke("study", "report", copy, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cells"]["finished"] == full["cells"]["finished"] - 1
    rows = {row["method"]: row for row in report["hypervolume"]}
    assert rows["random"]["n"] == 1 and rows["nsga2"]["n"] == 2
    (test,) = report["hypervolume_tests"]
    assert test["test"] != "wilcoxon"  # the methods no longer share their seeds: unpaired
    assert report["clean_vs_noisy"][0]["candidates"] == full["clean_vs_noisy"][0]["candidates"]
    text = invoke("study", "report", copy)
    assert "1 cell(s) not finished: hypervolume, fronts and diversity are over the finished cells only" in text.output
