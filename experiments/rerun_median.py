"""Re-train the median seed of each agent of a committed compare, so that a typical run can ship (issue 40.5).

    python experiments/rerun_median.py docs/results/compare-repeat-previous-10seeds OUT [AGENT ...]
    python experiments/rerun_median.py --package OUT PREFIX    # after the compare: pretrained/PREFIX-AGENT

A committed compare keeps each run's record, not its model. This copies every record into ``OUT/records``
except each agent's median seed (by final training-env return, as ``package_pretrained.py ... median``
picks it) and prints the compare's own command with ``--out OUT``: run it, and compare continues from the
records alone, training and evaluating only the median seeds with the same protocol. Then ``--package``
ships each as ``pretrained/<prefix>-<agent>`` (``package_pretrained.package``); its card says how the seed
was chosen and ranks the re-trained run among all the agent's runs (today's code need not reproduce the
old run bit for bit: the card holds the new run's own evaluation). ``OUT/median.json`` keeps the seeds.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import shutil
import sys
from pathlib import Path

from package_pretrained import ROOT, _read_text, median_selection, package, rank_selection

from rims_rl.app.atomic import atomic_write_json


def prepare(committed: Path, out: Path, agents: list[str]) -> tuple[dict[str, int], str]:
    """Copy the records but the median seeds'; return {agent: median seed} and the command to run."""
    rows = list(csv.DictReader(io.StringIO(_read_text(committed / "results.csv", "results"))))
    agents = agents or sorted({r["agent"] for r in rows}, key=[r["agent"] for r in rows].index)
    seeds = {agent: median_selection(committed, agent)[0] for agent in agents}
    records = out / "records"
    records.mkdir(parents=True, exist_ok=True)
    for path in sorted((committed / "records").glob("*.json")):
        if path.stem not in {f"{a}-seed{s}" for a, s in seeds.items()}:
            shutil.copyfile(path, records / path.name)
    command = _read_text(committed / "report.md", "report").split("```")[1].strip()
    argv = shlex.split(command)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(out)
    else:
        argv += ["--out", str(out)]
    atomic_write_json(out / "median.json", {"from": str(committed), "seeds": seeds})
    return seeds, shlex.join(argv)


def package_all(out: Path, prefix: str, root: Path = ROOT) -> list[Path]:
    """``<root>/pretrained/<prefix>-<agent>`` for every re-trained median seed of ``out``."""
    chosen = json.loads(_read_text(out / "median.json", "median seeds"))
    shipped = []
    for agent, seed in chosen["seeds"].items():
        how = (
            f"the median seed by training-env return of the committed 10-seed runs in {chosen['from']}, "
            f"re-trained with today's code (experiments/rerun_median.py); the new run is "
            + rank_selection(out, agent, int(seed))
        )
        shipped.append(package(out, agent, int(seed), f"{prefix}-{agent}", how, root=root))
    return shipped


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--package":
        for path in package_all(Path(sys.argv[2]), sys.argv[3]):
            print(path)
    elif len(sys.argv) >= 3 and not sys.argv[1].startswith("-"):
        chosen, cmd = prepare(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
        print(json.dumps(chosen))
        print(cmd)
    else:
        raise SystemExit(__doc__)
