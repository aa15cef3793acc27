"""A study on a local Ray instance: the evaluations go to Ray tasks and the cells equal the same runs inline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from uhnas.cli import app
from uhnas.store import open_run
from uhnas.study import run_study
from uhnas.study.pool import inline_pool

pytest.importorskip("ray")

STUDY = """\
name: ray
base:
  dataset: digits
  backend: gpu-b200-fp16
  population: 4
  generations: 1
  offspring: 2
  mc: 2
  training: {epochs: 1}
  executor: {timeout_s: 300}
grid:
  method: [nsga2, random]
  seed: [0]
"""


def trial_set(cell_dir: Path) -> list[tuple[object, ...]]:
    return sorted((r.hash, r.generation, r.slot, r.error, r.energy_nj, r.state) for r in open_run(cell_dir).records())


@pytest.mark.slow
def test_a_study_on_local_ray_equals_the_same_study_inline(tmp_path: Path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY, encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["study", "run", str(study), "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["executor"].startswith("Ray") and [c["state"] for c in data["cells"]] == ["done", "done"]
    pool = inline_pool()
    try:
        run_study(study, tmp_path / "inline", pool=pool)
    finally:
        pool.close()
    for cell in ("nsga2_s0", "random_s0"):
        assert len(open_run(tmp_path / "ray" / "cells" / cell).records()) == 6
        assert trial_set(tmp_path / "ray" / "cells" / cell) == trial_set(tmp_path / "inline" / "cells" / cell)
