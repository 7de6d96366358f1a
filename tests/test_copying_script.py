"""experiments/copying.py runs end to end on a tiny setting and writes its outputs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "copying.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("copying_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["rims", "lstm", "tlb", "assembly"])
def test_copying_script_tiny_run_writes_results(model: str, tmp_path: Path) -> None:
    script = _load_script()
    out = tmp_path / model
    argv = [
        "--model", model, "--hidden", "12", "--n-units", "3", "--k", "2",
        "--input-key-size", "8", "--input-heads", "2", "--comm-key-size", "4",
        "--comm-value-size", "4", "--comm-heads", "2",
        "--n-copy", "2", "--train-blank", "3", "--test-blank", "6",
        "--steps", "3", "--batch-size", "4", "--eval-every", "2", "--eval-batch", "8",
        "--device", "cpu", "--out", str(out),
        "--chunk-size", "2", "--n-latents", "2", "--n-modules", "3",
    ]  # fmt: skip
    script.main(argv)

    result = json.loads((out / "result.json").read_text())
    assert result["args"]["model"] == model
    assert result["args"]["steps"] == 3
    for split, n_blank in (("train", 3), ("test", 6)):
        metrics = result[split]
        assert metrics["n_blank"] == n_blank
        for key in ("ce_copy", "ce_all", "acc_symbol", "acc_sequence"):
            assert math.isfinite(metrics[key]), (split, key, metrics[key])
        assert metrics["ce_copy"] >= 0.0
        assert 0.0 <= metrics["acc_symbol"] <= 1.0
        if model == "rims":
            assert len(metrics["active_frac_blanks"]) == 3
        if model == "tlb":
            assert 0.0 <= metrics["slow_attention_entropy"] <= 1.0 + 1e-6
        if model == "assembly":
            assert 0.0 < metrics["contraction_margin"] < 1.0
    for key in ("n_params", "wall_s", "chance_ce_copy"):
        assert math.isfinite(result[key])

    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 3]
    assert all(math.isfinite(float(r["test_ce_copy"])) for r in rows)
    assert (out / "curve.png").stat().st_size > 0


def test_copying_script_rejects_unknown_model() -> None:
    script = _load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--model", "transformer"])
