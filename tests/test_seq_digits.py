"""experiments/seq_digits.py: the resampling keeps digits and labels, sequences are pixels, a run learns."""

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

pytest.importorskip("sklearn")

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_script", EXPERIMENTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_paper_ratios_give_the_stated_sizes() -> None:
    script = _load("seq_digits")
    assert script.paper_test_sizes(14) == [16, 19, 24]
    assert script.paper_test_sizes(8) == [9, 11, 14]
    assert script.parse_args([]).test_sizes == [9, 11, 14]
    assert script.parse_args(["--train-size", "6", "--test-sizes", "7", "10"]).test_sizes == [7, 10]


def test_resampling_keeps_labels_shapes_and_the_digit() -> None:
    script = _load("seq_digits")
    images, labels = script.load_digits()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert torch.equal(script.resample(images, 8), images)  # the training size is the source itself
    for size in (9, 11, 14):
        big = script.resample(images, size)
        assert big.shape == (1797, size, size)
        assert float(big.min()) >= -1e-6 and float(big.max()) <= 1 + 1e-6
        # the same digit, drawn larger: the ink per image is kept, and shrinking it back lands far closer to
        # its own source than to another digit (0.09-0.10 vs 0.24 mean absolute difference)
        assert (big.mean((1, 2)) - images.mean((1, 2))).abs().max() < 0.02
        back = script.resample(big, 8)
        assert (back - images).abs().mean() < 0.5 * (images - images.roll(1, 0)).abs().mean()
    # labels stay with their images: class means stay distinct after resampling
    big = script.resample(images, 14)
    means = torch.stack([big[labels == c].mean(0) for c in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 0.5


def test_sequences_are_pixels_one_at_a_time_row_by_row() -> None:
    script = _load("seq_digits")
    images = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)
    seq = script.as_sequence(images)
    assert seq.shape == (9, 2, 1)
    assert seq[:, 1, 0].tolist() == images[1].flatten().tolist()


def test_split_is_fixed_and_disjoint() -> None:
    script = _load("seq_digits")
    train, test = script.split(1797, data_seed=0)
    again, _ = script.split(1797, data_seed=0)
    assert torch.equal(train, again)
    assert len(train) == 1438 and len(test) == 359
    assert len(set(train.tolist()) | set(test.tolist())) == 1797


@pytest.mark.parametrize("model", ["rims", "lstm"])
def test_tiny_run_writes_results_and_learns(model: str, tmp_path: Path) -> None:
    script = _load("seq_digits")
    argv = [
        "--model", model, "--hidden", "16", "--n-units", "4", "--k", "2",
        "--input-key-size", "8", "--input-heads", "2", "--comm-key-size", "4",
        "--comm-value-size", "4", "--comm-heads", "2",
        "--train-size", "4", "--test-sizes", "5", "6", "--steps", "100", "--eval-every", "50",
        "--lr", "2e-2", "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path),
    ]  # fmt: skip
    script.main(argv)
    result = json.loads((tmp_path / "seed-1" / "result.json").read_text())
    assert set(result["accuracy"]) == {"4", "5", "6"}
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    assert result["n_train"] + result["n_held_out"] == 1797
    rows = list(csv.DictReader((tmp_path / "seed-1" / "curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 50, 100]
    first, last = float(rows[0]["ce_held_out"]), float(rows[-1]["ce_held_out"])
    assert math.isfinite(first) and last < first - 0.4  # from ~2.3 (chance: ln 10) to ~1.2-1.6


def test_paper_table_digits(tmp_path: Path) -> None:
    script = _load("seq_digits")
    for model in ("rims", "lstm"):
        argv = [
            "--model", model, "--hidden", "8", "--n-units", "2", "--k", "1", "--input-heads", "1",
            "--comm-heads", "1", "--train-size", "3", "--test-sizes", "4", "--steps", "1",
            "--device", "cpu", "--out", str(tmp_path / model),
        ]  # fmt: skip
        script.main(argv)
    table = _load("paper_table").main(["digits", str(tmp_path / "rims"), str(tmp_path / "lstm")])
    assert "| 3x3 (train size) | 4x4 |" in table
    assert table.splitlines()[3].startswith("| LSTM, hidden 8 |")


@pytest.mark.parametrize("kind", ["tlb", "assembly", "gru"])
def test_the_classifier_reads_each_cores_output_width(kind: str) -> None:
    # The TLB's state (its hidden_size attribute) is wider than its output: the head must take the output.
    script = _load("seq_digits")
    args = script.parse_args(["--model", kind, "--hidden", "12", "--n-modules", "4"])
    model = script.build_model(args)
    logits = model(script.as_sequence(torch.rand(3, 4, 4)))
    assert logits.shape == (3, 10)


def test_match_params_refuses_a_match_it_cannot_make(capsys: pytest.CaptureFixture[str]) -> None:
    script = _load("seq_digits")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--model", "tlb", "--match-params", "rims", "--hidden", "60", "--steps", "1"])
    assert exit_.value.code == 2
    assert "--d-model" in capsys.readouterr().err
