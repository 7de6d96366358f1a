"""experiments/copying.py: the paper's metric, the equal-parameter sizing, and a tiny run end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_script", EXPERIMENTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


TINY = [
    "--hidden", "12", "--n-units", "3", "--k", "2",
    "--input-key-size", "8", "--input-heads", "2", "--comm-key-size", "4",
    "--comm-value-size", "4", "--comm-heads", "2",
    "--n-copy", "2", "--train-blank", "3", "--test-blank", "6",
    "--batch-size", "4", "--eval-batch", "8", "--device", "cpu",
    "--chunk-size", "2", "--n-latents", "2", "--n-modules", "3",
]  # fmt: skip


def test_defaults_are_the_papers_protocol() -> None:
    args = _load("copying").parse_args([])
    assert (args.n_copy, args.n_symbols, args.train_blank, args.test_blank) == (10, 8, 50, 200)
    assert (args.lr, args.clip, args.batch_size, args.steps, args.loss_on) == (1e-3, 1.0, 64, 40_000, "all")
    assert (args.model, args.n_units, args.k, args.hidden) == ("rims", 6, 4, 600)


def test_cross_entropies_by_hand() -> None:
    """Positions 0, 1 are blanks, position 2 is the copy position (n_copy = 1); two sequences."""
    script = _load("copying")
    ln = math.log
    logits = torch.zeros(3, 2, 2)  # [T, B, C]
    logits[1, 0] = torch.tensor([ln(3), 0.0])  # p(target 0) = 3/4
    logits[2, 0] = torch.tensor([0.0, ln(3)])  # p(target 0) = 1/4
    targets = torch.zeros(3, 2, dtype=torch.long)  # the second sequence: uniform everywhere, CE ln 2
    got = script.cross_entropies(logits, targets, n_copy=1)
    first = [ln(2), ln(4 / 3), ln(4)]
    assert got["ce_all"] == pytest.approx((sum(first) + 3 * ln(2)) / 6)
    assert got["ce_copy"] == pytest.approx((ln(4) + ln(2)) / 2)


def test_match_params_gives_an_lstm_with_rims_parameter_count() -> None:
    script = _load("copying")
    args = script.resolve_args(script.parse_args([*TINY, "--model", "lstm", "--match-params", "rims"]))
    rims = sum(p.numel() for p in script.build_model(args, "rims", 12).parameters())
    lstm = sum(p.numel() for p in script.build_model(args).parameters())
    smaller = sum(p.numel() for p in script.build_model(args, "lstm", args.hidden - 1).parameters())
    bigger = sum(p.numel() for p in script.build_model(args, "lstm", args.hidden + 1).parameters())
    assert (args.hidden, args.matched_from_hidden) != (12, None)
    assert abs(lstm - rims) <= min(abs(smaller - rims), abs(bigger - rims))


def test_match_hidden_finds_the_closest_size() -> None:
    match_hidden = _load("core_options").match_hidden
    assert match_hidden(lambda h: h * h, 50) == 7  # 49 is closer than 64
    assert match_hidden(lambda h: h * h, 60) == 8
    assert match_hidden(lambda h: 10 * h, 95, step=3) == 9  # multiples of 3 only: 90 vs 120
    with pytest.raises(ValueError, match="no hidden size"):
        match_hidden(lambda h: h, 10**9, upper=64)


@pytest.mark.parametrize("model", ["rims", "lstm", "tlb", "assembly"])
def test_copying_script_tiny_run_writes_results(model: str, tmp_path: Path) -> None:
    script = _load("copying")
    argv = [*TINY, "--model", model, "--steps", "3", "--eval-every", "2", "--seeds", "1", "2"]
    script.main([*argv, "--out", str(tmp_path)])

    for seed in (1, 2):
        out = tmp_path / f"seed-{seed}"
        result = json.loads((out / "result.json").read_text())
        assert (result["args"]["model"], result["args"]["steps"], result["seed"]) == (model, 3, seed)
        for split, n_blank in (("train", 3), ("test", 6)):
            metrics = result[split]
            assert metrics["n_blank"] == n_blank
            for key in ("ce_copy", "ce_all", "acc_symbol", "acc_sequence"):
                assert math.isfinite(metrics[key]), (split, key, metrics[key])
            assert 0.0 <= metrics["acc_symbol"] <= 1.0
            if model == "rims":
                assert len(metrics["active_frac_blanks"]) == 3
            if model == "tlb":
                assert 0.0 <= metrics["slow_attention_entropy"] <= 1.0 + 1e-6
            if model == "assembly":
                assert 0.0 < metrics["contraction_margin"] < 1.0
        assert result["chance_ce_all_test"] == pytest.approx(2 * math.log(8) / 10)
        rows = list(csv.DictReader((out / "curve.csv").open()))
        assert [int(r["step"]) for r in rows] == [0, 2, 3]
        assert all(math.isfinite(float(r["test_ce_all"])) for r in rows)
        assert (out / "curve.png").stat().st_size > 0
    a, b = (json.loads((tmp_path / f"seed-{s}" / "result.json").read_text()) for s in (1, 2))
    assert a["test"]["ce_all"] != b["test"]["ce_all"]  # the seeds are different runs


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    script = _load("copying")
    argv = [*TINY, "--model", "lstm", "--steps", "60", "--eval-every", "60", "--lr", "1e-2"]
    script.main([*argv, "--out", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "seed-1" / "curve.csv").open()))
    assert float(rows[-1]["train_ce_all"]) < 0.7 * float(rows[0]["train_ce_all"])


def test_paper_table_lists_runs_beside_the_paper(tmp_path: Path) -> None:
    script = _load("copying")
    for model in ("rims", "lstm"):
        script.main(
            [*TINY, "--model", model, "--steps", "2", "--seeds", "1", "2", "--out", str(tmp_path / model)]
        )
    table = _load("paper_table").main(["copying", str(tmp_path / "rims"), str(tmp_path / "lstm")])
    lines = table.splitlines()
    assert lines[2].startswith("| RIMs, 3 units, k 2, hidden 12 |") and "| 2 | 1,2 |" in lines[2]
    assert lines[3].startswith("| LSTM, hidden 12 |")
    assert "| paper: LSTM, hidden 600 | | 40000 | | | 0.00 | 3.56 |" in table
    r = json.loads((tmp_path / "lstm" / "seed-1" / "result.json").read_text())["test"]
    wait = (r["ce_all"] * 10 - r["ce_copy"] * 2) / 8  # 2 copy positions of 10
    assert _load("paper_table").wait_ce(r, 2) == pytest.approx(wait)
    ce = [
        json.loads((tmp_path / "rims" / f"seed-{s}" / "result.json").read_text())["test"]["ce_all"]
        for s in (1, 2)
    ]
    mean = sum(ce) / 2
    assert f"{mean:.2f} ± " in lines[2]


def test_copying_script_rejects_unknown_model() -> None:
    script = _load("copying")
    with pytest.raises(SystemExit):
        script.parse_args(["--model", "transformer"])


def test_results_and_curves_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    """result.json marks a finished seed for the tables and for resumed blocks: a write that fails
    partway (here a value JSON cannot hold, or a curve row with a stray column) keeps the previous file
    whole and leaves no temp file behind."""
    options = _load("core_options")
    options.write_result({"seed": 1, "score": 0.5}, str(tmp_path))
    with pytest.raises(TypeError):
        options.write_result({"seed": 2, "score": 0.7, "model": object()}, str(tmp_path))
    assert json.loads((tmp_path / "result.json").read_text()) == {"seed": 1, "score": 0.5}
    curve = tmp_path / "curve.csv"
    options.write_curve([{"step": 0, "loss": 1.0}], str(curve))
    with pytest.raises(ValueError, match="fields not in fieldnames"):
        options.write_curve([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 0.5, "extra": 2}], str(curve))
    assert list(csv.DictReader(curve.open())) == [{"step": "0", "loss": "1.0"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.csv", "result.json"]
