"""experiments/distractor_baselines.py: one row per env of the suite, the shortcut lines in order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "distractor_baselines.py"


def test_the_table_has_every_env_and_knowing_more_of_the_mission_never_scores_less() -> None:
    spec = importlib.util.spec_from_file_location("distractor_baselines_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    rows = module.main(["--layouts", "40"]).splitlines()[2:]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["train", "more", "novel", "more-novel", "novel-matched", "more-novel-matched"]
    for row in rows:
        colour, kind, random, reachable = (float(c.strip().rstrip("%")) for c in row.split("|")[3:7])
        assert 100 >= colour >= random > 0 and kind >= random and reachable > 90, row
    assert float(rows[0].split("|")[5].strip().rstrip("%")) == pytest.approx(100 / 3, abs=0.1)  # 1 in 3
    with pytest.raises(SystemExit):
        module.main(["--layouts", "0"])
