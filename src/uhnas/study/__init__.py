"""Studies: a grid of runs (datasets x backends x methods x seeds x ablations) from one YAML file.

`load_study` / `expand` (spec, grid) turn the file into cells, each an ordinary run directory under
``DIR/cells/<cell id>/``; `run_study` (runner) runs them resumably on one shared worker pool (pool) or Ray;
`study_status` (status) and `write_report` (report, with stats, collect and figures) read the cells' stores.
"""

from __future__ import annotations

from uhnas.study.grid import Cell, expand
from uhnas.study.report import build_report, write_report
from uhnas.study.runner import StudyEvent, StudyRunResult, create_study, run_study
from uhnas.study.spec import StudySpec, load_study
from uhnas.study.status import study_status

__all__ = [
    "Cell",
    "StudyEvent",
    "StudyRunResult",
    "StudySpec",
    "build_report",
    "create_study",
    "expand",
    "load_study",
    "run_study",
    "study_status",
    "write_report",
]
