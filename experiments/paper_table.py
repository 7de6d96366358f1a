"""Tables of the paper experiments' runs beside the RIMs paper's numbers (mean ± sd over seeds).

Each folder given is one row: the ``seed-*/result.json`` files that ``experiments/copying.py``,
``experiments/seq_digits.py`` or ``experiments/bouncing_balls.py`` wrote under it (one per seed). Prints
Markdown; ``--out`` also writes it.

    python experiments/paper_table.py copying runs/copying/paper/*
    python experiments/paper_table.py digits runs/digits/*
    python experiments/paper_table.py balls runs/balls/*
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The paper's Table 1 (copying, train with 50 blanks / test with 200, cross-entropy over all positions).
PAPER_COPYING: tuple[tuple[str, str, str], ...] = (
    ("paper: RIMs, 6 units, k 4, hidden 600", "0.00", "0.00"),
    ("paper: RIMs, 6 units, k 3, hidden 600", "0.00", "0.00"),
    ("paper: RIMs, 6 units, k 2, hidden 600", "0.00", "0.00"),
    ("paper: RIMs, 5 units, k 2, hidden 500", "0.00", "0.00"),
    ("paper: LSTM, hidden 300", "0.00", "4.32"),
    ("paper: LSTM, hidden 600", "0.00", "3.56"),
)


class BadRuns(ValueError):
    """Folders that cannot make one table (no results, or rows run on different data): one line, exit 2."""


def load_runs(folder: str | Path) -> list[dict[str, Any]]:
    """The per-seed results under ``folder``, by seed."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("seed-*/result.json"))]
    if not runs:
        raise BadRuns(f"no seed-*/result.json under {folder}: pass the --out folder of a run")
    return sorted(runs, key=lambda r: r["seed"])


def label(args: dict[str, Any]) -> str:
    """A row's name from its arguments (model, width, and what its width was matched to)."""
    kind, hidden = args["model"], args["hidden"]
    if kind == "rims":
        name = f"RIMs, {args['n_units']} units, k {args['k']}, hidden {hidden}"
    elif kind == "lstm":
        name = f"LSTM, hidden {hidden}"
    elif kind == "tlb":
        name = f"TLB, hidden {hidden}, chunk {args['chunk_size']}"
    else:
        name = f"{kind}, hidden {hidden}"
    if args.get("match_params"):
        name += f" (parameters of {args['match_params']} at hidden {args.get('matched_from_hidden')})"
    return name


def mean_sd(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± sd`` (sample sd; just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def common(runs: list[dict[str, Any]], key: str) -> Any:
    """An argument every seed shares (a row mixing settings is refused)."""
    values = {json.dumps(r["args"][key]) for r in runs}
    if len(values) != 1:
        raise BadRuns(f"runs of one row differ in {key}: {sorted(values)}")
    return runs[0]["args"][key]


def row_head(runs: list[dict[str, Any]]) -> list[str]:
    """Model, parameters, steps, seeds and seconds per step (mean over seeds) of one row."""
    steps = common(runs, "steps")
    for key in ("model", "hidden"):
        common(runs, key)
    per_step = statistics.mean(r["train_wall_s"] / steps for r in runs)
    seeds = ",".join(str(r["seed"]) for r in runs)
    return [label(runs[0]["args"]), f"{runs[0]['n_params'] / 1e3:.1f}k", str(steps), seeds, f"{per_step:.3f}"]


def wait_ce(split: dict[str, Any], n_copy: int) -> float:
    """Cross-entropy over the positions before the copy (symbols shown, blanks, delimiter: target blank),
    recovered from the all-position and copy-position means."""
    T = 2 * n_copy + split["n_blank"]
    return (split["ce_all"] * T - split["ce_copy"] * n_copy) / (T - n_copy)


def copying_table(folders: Sequence[str | Path]) -> str:
    """Copying: both cross-entropies at the train and test delay, beside the paper's Table 1."""
    rows = [load_runs(f) for f in folders]
    train_blank = {common(r, "train_blank") for r in rows}
    test_blank = {common(r, "test_blank") for r in rows}
    n_copy = {common(r, "n_copy") for r in rows}
    tb, sb = "/".join(map(str, sorted(train_blank))), "/".join(map(str, sorted(test_blank)))
    lines = [
        f"| model | params | steps | seeds | s/step | CE all, train ({tb}) | CE all, test ({sb}) "
        f"| CE copy, train | CE copy, test | CE wait, test | test symbol acc |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for runs in rows:
        cells = row_head(runs)
        for metric in ("ce_all", "ce_copy"):
            cells += [mean_sd([r[split][metric] for r in runs]) for split in ("train", "test")]
        cells.append(mean_sd([wait_ce(r["test"], r["args"]["n_copy"]) for r in runs]))
        cells.append(mean_sd([r["test"]["acc_symbol"] for r in runs]))
        lines.append("| " + " | ".join(cells) + " |")
    for name, train, test in PAPER_COPYING:
        lines.append(f"| {name} | | 40000 | | | {train} | {test} | | | | |")
    chance = rows[0][0]
    lines.append("")
    lines.append(
        f"n_copy {'/'.join(map(str, sorted(n_copy)))}; CE in nats, mean ± sd over seeds. "
        "Uniform guess on the copy positions with blanks right: "
        f"CE all {chance['chance_ce_all_train']:.3f} (train) / "
        f"{chance['chance_ce_all_test']:.3f} (test), CE copy {chance['chance_ce_copy']:.3f}. Paper rows: "
        "its Table 1 (hidden 600, 50 / 200 blanks, all positions; 200 epochs x 200 batches). "
        "CE wait: over the positions before the copy (target: blank), from CE all and CE copy."
    )
    return "\n".join(lines)


def digits_table(folders: Sequence[str | Path]) -> str:
    """Sequential digits: held-out accuracy (%) at the training size and each test size."""
    rows = [load_runs(f) for f in folders]
    sizes = [str(common(rows[0], "train_size")), *map(str, common(rows[0], "test_sizes"))]
    for runs in rows:
        if [str(common(runs, "train_size")), *map(str, common(runs, "test_sizes"))] != sizes:
            raise BadRuns("rows differ in image sizes")
    head = [f"{s}x{s}" + (" (train size)" if i == 0 else "") for i, s in enumerate(sizes)]
    lines = [
        "| model | params | steps | seeds | s/step | " + " | ".join(head) + " |",
        "|---|---:|---:|---|---:|" + "---:|" * len(sizes),
    ]
    for runs in rows:
        cells = row_head(runs) + [mean_sd([100 * r["accuracy"][s] for r in runs], 1) for s in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Held-out accuracy (%), mean ± sd over seeds; chance 10%.")
    return "\n".join(lines)


EARLY_FRAMES = 5
"""Bouncing balls: the first rolled-out frames scored apart, where a model still tracks the balls."""


def balls_table(folders: Sequence[str | Path]) -> str:
    """Bouncing balls: rollout BCE per frame on each test split, over the whole rollout and over its
    first frames (a short run loses the balls within a few frames, after which every model scores near
    the constant predictor), and the constant predictor's."""
    rows = [load_runs(f) for f in folders]
    splits = list(rows[0][0]["rollout_bce"])
    for runs in rows:
        for key in ("size", "frames", "context", "train_balls", "ood_balls", "curtain_balls", "data_seed"):
            if json.dumps(common(runs, key)) != json.dumps(common(rows[0], key)):
                raise BadRuns(f"rows differ in {key}: their test videos are not the same")
    rolled = int(common(rows[0], "frames")) - int(common(rows[0], "context"))
    early = min(EARLY_FRAMES, rolled)
    head = [f"{s} ({rolled} frames)" for s in splits] + [f"{s} (frames 1-{early})" for s in splits]
    lines = [
        "| model | params | steps | seeds | s/step | " + " | ".join(head) + " |",
        "|---|---:|---:|---|---:|" + "---:|" * len(head),
    ]
    for runs in rows:
        cells = row_head(runs) + [mean_sd([r["rollout_bce"][s] for r in runs], 1) for s in splits]
        cells += [
            mean_sd([sum(r["rollout_bce_per_frame"][s][:early]) / early for r in runs], 1) for s in splits
        ]
        lines.append("| " + " | ".join(cells) + " |")
    constant = rows[0][0]["constant_bce"]
    lines.append("| best constant predictor (every ball lost) | - | - | - | - | " + " | ".join(
        f"{constant[s]:.1f}" for s in [*splits, *splits]) + " |")  # fmt: skip
    lines.append("")
    lines.append(
        "Rollout BCE per frame (summed over pixels, lower is better), mean ± sd over seeds, over every "
        f"rolled-out frame and over the first {early}. The constant predictor's score is its mean over "
        "the whole rollout in both column groups (its score does not depend on the frame: the balls' "
        "statistics do not change with time)."
    )
    return "\n".join(lines)


TABLES = {"copying": copying_table, "digits": digits_table, "balls": balls_table}


def main(argv: list[str] | None = None) -> str:
    """Print (and with ``--out`` write) the table of the given run folders."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("task", choices=tuple(TABLES))
    p.add_argument("folders", nargs="+", help="one row each: folders holding seed-*/result.json")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    try:
        table = TABLES[args.task](args.folders)
    except BadRuns as err:
        print(f"paper_table.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
