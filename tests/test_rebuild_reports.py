"""experiments/rebuild_reports.py: every committed report is what its committed records give today."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import rebuild_reports  # noqa: E402

REBUILT = re.compile(r", report_rebuilt=[^\n]*")


@pytest.mark.parametrize("name", ["compare-repeat-previous-10seeds", "multiroom-dropout-10seeds"])
def test_committed_report_is_what_its_records_give(tmp_path: Path, name: str) -> None:
    """Rebuilding a committed report from its own results.json reproduces it (bar the rebuild date);
    multiroom-dropout reuses runs whose records live elsewhere, so its learning-curve figure is kept."""
    committed = ROOT / "docs/results" / name
    copy = tmp_path / name
    shutil.copytree(committed, copy)
    assert rebuild_reports.main([str(copy)]) == 0
    text = (copy / "report.md").read_text()
    assert REBUILT.sub("", text) == REBUILT.sub("", (committed / "report.md").read_text())
    assert "OOD (run mean over variants)" in text and "OOD (pooled)" not in text
    assert "](learning_curves.png)" in text


def test_missing_results_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rebuild_reports.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
