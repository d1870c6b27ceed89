"""experiments/selection.py --only: one task restudied, the others' rows kept and said to be kept."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
selection_study = pytest.importorskip("selection")


def _prev() -> dict:
    return {"machine": {"date": "2026-12-01"}, "runs": "runs/a", "halves": 200,
            "tasks": {"webcam": {"rnc-s0": {"today": 1}}, "digits": {"ce-s0": {"today": 2}}}}


def test_kept_rows_carry_the_other_tasks_with_their_folder_and_date():
    kept = selection_study.kept_rows(_prev(), ["digits"])
    assert kept == {"tasks": {"webcam": {"rnc-s0": {"today": 1}}}, "task_runs": {"webcam": "runs/a"},
                    "kept": {"webcam": "2026-12-01"}}
    # a second --only run keeps the folder and date the rows really came from, not the run that kept them
    later = {**_prev(), "machine": {"date": "2026-12-07"}, "runs": "runs/b", "task_runs": {"webcam": "runs/a"},
             "kept": {"webcam": "2026-12-01"}}
    assert selection_study.kept_rows(later, ["digits"])["kept"] == {"webcam": "2026-12-01"}
    assert selection_study.kept_rows(later, ["digits"])["task_runs"] == {"webcam": "runs/a"}
    assert selection_study.kept_rows({}, ["digits"])["tasks"] == {}  # no record yet: nothing to keep


def test_runs_line_names_each_folder_and_what_was_kept():
    old = _prev()  # a record from before --only: one folder for all
    assert selection_study._runs_line(old) == "`runs/a`"
    mixed = {**old, "task_runs": {"webcam": "runs/a", "digits": "runs/b"}, "kept": {"webcam": "2026-12-01"}}
    assert selection_study._runs_line(mixed) == ("`runs/a` (webcam); `runs/b` (digits); the webcam rows are kept "
                                                 "from the run of 2026-12-01")


def test_only_a_task_without_runs_stops_with_one_line_and_writes_nothing(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "selection.py"), "--runs", str(tmp_path / "none"),
                        "--only", "digits", "--docs-dir", str(docs)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == f"{tmp_path / 'none' / 'digits'}: no evidence runs (<loss>-s<seed> folders) to study"
    assert not (docs / "selection.json").exists()
