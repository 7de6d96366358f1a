"""Does a re-run of a comparison agree with the committed one? Markdown tables from two compare folders.

    python experiments/rerun_agreement.py docs/results/compare-repeat-previous-10seeds \\
        docs/results/compare-repeat-previous-today-10seeds

Why: the GRU, TLB and RIMs time loops became C++ after the committed RepeatPrevious runs, and a seed
re-trained with today's code lands elsewhere (rounding compounds over 200k steps), so the committed runs
are not reproduced run by run. What a reader needs is whether they are reproduced as distributions:
per agent, the cells of both (training env and each run's OOD mean, IQM over runs) and P(a re-run beats
a committed run), 0.5 meaning the same distribution; then the pairwise verdicts that the leaderboard
reports, in each. Intervals resample whole runs; bold where one excludes 0.5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rims_in_ppo, beside this script

from rims_in_ppo import cells_table, load_runs, pairs_table  # noqa: E402

#: The pairs whose verdicts the leaderboard and the write-ups quote for this suite.
PAIRS = (
    ("rims_ppo", "lstm_ppo"),
    ("rims_ppo", "gru_ppo"),
    ("gru_ppo", "lstm_ppo"),
    ("tlb_ppo", "lstm_ppo"),
    ("assembly_ppo", "lstm_ppo"),
    ("lstm_ppo", "ppo"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("committed", type=Path, help="the committed compare folder (its records/)")
    p.add_argument("rerun", type=Path, help="the re-run's compare folder (its records/)")
    p.add_argument("--reps", type=int, default=2000)
    args = p.parse_args(argv)

    committed, _ = load_runs(args.committed)
    rerun, _ = load_runs(args.rerun)
    agents = [a for a in dict.fromkeys(r["agent"] for r in committed) if any(r["agent"] == a for r in rerun)]
    left_out = sorted({r["agent"] for r in committed + rerun} - set(agents))
    both = [{**r, "agent": f"{r['agent']} (committed)"} for r in committed]
    both += [{**r, "agent": f"{r['agent']} (re-run)"} for r in rerun]
    labels = [f"{a} ({which})" for a in agents for which in ("committed", "re-run")]
    out = [f"Committed: `{args.committed}`; re-run: `{args.rerun}`.", ""]
    if left_out:
        out += [f"Agents in one folder only, left out: {', '.join(left_out)}.", ""]
    out += ["## The cells, committed and re-run", "", *cells_table(both, labels, args.reps), ""]
    same = [(f"{a} (re-run)", f"{a} (committed)") for a in agents]
    out += ["## P(re-run > committed) per agent (0.5: the same distribution)", ""]
    out += [*pairs_table(both, same, args.reps), ""]
    pairs = [(x, y) for x, y in PAIRS if x in agents and y in agents]
    for name, records in (("committed", committed), ("re-run", rerun)):
        out += [f"## The pairs in the {name} runs", "", *pairs_table(records, pairs, args.reps), ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
