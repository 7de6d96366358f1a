"""experiments/rims_in_ppo.py (issue 41's tables) on committed records: an ablation identical to RIMs reads
P = 0.5 against it and RIMs' own cell, choices at a grid's edge are flagged, and records' diagnostics
(policy KL, unit usage) are summarised early and late."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rims_in_ppo import main  # experiments/ is on pytest's pythonpath (pyproject)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_tables_from_committed_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy" / "records"
    shutil.copytree(RESULTS / "compare-repeat-previous-10seeds" / "records", copy)
    for path in copy.glob("rims_ppo-seed*.json"):  # two runs' diagnostics, as --log-policy-shift keeps them
        data = json.loads(path.read_text())
        kl = [0.04, 0.03, 0.02, 0.02, 0.01, 0.01, 0.01, 0.005]
        data["diagnostics"] = {
            "train/policy_kl": {"steps": list(range(1, 9)), "values": kl},
            "rims/usage_entropy": {"steps": [1, 8], "values": [0.9, 0.7]},
        }
        path.write_text(json.dumps(data))
    argv = ["--tune", str(RESULTS / "tune-repeat-previous")]
    argv += ["--main", str(RESULTS / "compare-repeat-previous-10seeds")]
    assert main([*argv, "--ablation", f"copy={copy.parent}", "--reps", "200"]) == 0
    text = capsys.readouterr().out
    assert "| rims_ppo | 2 | learning_rate=0.001 | 0.503 | yes |" in text  # 2 learning rates: always an edge
    lines = text.splitlines()
    rims = next(line for line in lines if line.startswith("| rims_ppo | 10 |"))
    assert rims.replace("| rims_ppo |", "| rims_ppo (copy) |") in lines  # the same runs, the same cell
    assert any(line.startswith("| lstm_ppo | 10 |") for line in lines)  # the ablation brings no other runs
    copy_vs_rims = next(line for line in lines if line.startswith("| P(rims_ppo (copy) > rims_ppo)"))
    assert copy_vs_rims.count("0.50 [") == 2  # training env and OOD: no difference, to the digit
    assert "| rims_ppo (copy) | 10 | 0.0350 | 0.0075 | 0.70 |" in text  # quarters of 8 updates: 2 each


def test_rerun_agreement_reads_a_copy_as_the_same_distribution_and_a_shift_as_a_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rerun_agreement import main as agreement

    committed = RESULTS / "compare-repeat-previous-10seeds"
    shifted = tmp_path / "rerun" / "records"
    shutil.copytree(committed / "records", shifted)
    for path in shifted.glob("gru_ppo-seed*.json"):  # a re-run whose GRU scores 0.3 lower everywhere
        data = json.loads(path.read_text())
        for record in data["records"]:
            record["mean_return"] -= 0.3
        path.write_text(json.dumps(data))
    assert agreement([str(committed), str(shifted.parent), "--reps", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lstm = next(line for line in lines if line.startswith("| P(lstm_ppo (re-run) > lstm_ppo (committed))"))
    assert lstm.count("0.50 [") == 2  # the same runs: no difference, to the digit
    gru = next(line for line in lines if line.startswith("| P(gru_ppo (re-run) > gru_ppo (committed))"))
    assert gru.count("**") == 4  # both intervals exclude 0.5
    assert "| P(rims_ppo > lstm_ppo) |" in lines[lines.index("## The pairs in the re-run runs") + 4]
