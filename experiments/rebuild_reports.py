"""Rebuild committed comparison reports from their stored records, with today's statistics.

A report's numbers are a function of its score records; when the statistics change (issue 38: OOD
figures from each run's mean over the variants), every committed report should say what the records
give now, without retraining. This reads ``results.json`` (records, command, settings, machine,
throughput, failures) and the per-run records' learning curves, and writes the report files again
through ``write_report``, the function ``compare`` itself uses. The command and machine quoted are the
original run's; the settings line gains ``report_rebuilt`` so a reader knows the text is newer.

    python experiments/rebuild_reports.py                       # every docs/results/* with results.json
    python experiments/rebuild_reports.py docs/results/compare-repeat-previous-10seeds
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rims_rl.app.curves import Curve  # noqa: E402
from rims_rl.app.records import RECORDS_DIR, RunRecord  # noqa: E402
from rims_rl.app.report import CURVES_CAPTION, write_report  # noqa: E402
from rims_rl.app.summary import score_record  # noqa: E402
from rims_rl.envs.untrusted import load_json  # noqa: E402

RESULTS = "results.json"


def _mapping(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise SystemExit(f"error: {what} is not a JSON object; restore it from git")
    return dict(data)


def _throughput(data: Any) -> dict[str, list[float]] | None:
    """``agent -> steps/s`` as stored; None when the report had no throughput table."""
    if data is None:
        return None
    table = _mapping(data, "throughput_steps_per_s")
    return {
        str(agent): [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        for agent, values in table.items()
        if isinstance(values, list)
    }


def _curves(folder: Path, agents: Sequence[str]) -> dict[str, list[Curve]] | None:
    """Each agent's learning curves from the per-run records, in seed order; None where some agent's
    runs have no record here (runs reused from another compare): the figure drawn then is kept."""
    files = sorted((folder / RECORDS_DIR).glob("*.json")) if (folder / RECORDS_DIR).is_dir() else []
    runs: list[tuple[str, int, Curve]] = []
    for file in files:
        record = RunRecord.from_dict(load_json(file, "run record"), file)
        agent, seed = record.job.get("agent"), record.job.get("seed")
        if record.curve is not None and isinstance(agent, str) and isinstance(seed, int):
            runs.append((agent, seed, record.curve))
    curves: dict[str, list[Curve]] = {a: [] for a in agents}
    for agent, _, curve in sorted(runs, key=lambda r: (r[0], r[1])):
        curves.setdefault(agent, []).append(curve)
    return curves if all(curves[a] for a in agents) else None


def _title(folder: Path, meta: Mapping[str, Any], agents: Sequence[str]) -> str:
    """The report's own title where it has one, else the one ``compare`` gives."""
    report = folder / "report.md"
    first = report.read_text().splitlines()[0] if report.is_file() else ""
    if first.startswith("# "):
        return first[2:]
    return f"Comparison on {meta.get('suite', meta.get('env', '?'))}: {' vs '.join(agents)}"


def rebuild(folder: Path) -> Path:
    """Write ``folder``'s report files again from its ``results.json`` and records; return report.md."""
    data = _mapping(load_json(folder / RESULTS, "results file"), str(folder / RESULTS))
    try:
        records = [dict(score_record(r)) for r in data.get("records") or []]
    except ValueError as err:
        raise SystemExit(f"error: {folder / RESULTS}: {err}; restore it from git") from err
    meta = _mapping(data.get("meta") or {}, "meta")
    meta.pop("report_rebuilt", None)
    meta["report_rebuilt"] = f"{date.today().isoformat()} (experiments/rebuild_reports.py)"
    agents = list(dict.fromkeys(str(r["agent"]) for r in records))
    reps = meta.get("bootstrap_reps", 2000)
    curves = _curves(folder, agents)
    paths = write_report(
        folder,
        records,
        curves=curves,
        command=data.get("command") if isinstance(data.get("command"), str) else None,
        meta=meta,
        failures=[f for f in data.get("failures") or [] if isinstance(f, Mapping)],
        reps=reps if isinstance(reps, int) and 0 < reps <= 100_000 else 2000,
        title=_title(folder, meta, agents),
        machine=_mapping(data.get("machine") or {}, "machine"),
        throughput=_throughput(data.get("throughput_steps_per_s")),
        kept_figures={CURVES_CAPTION: "learning_curves.png"} if curves is None else None,
    )
    return paths["report"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="*", type=Path, help="report folders (default: docs/results/*)")
    args = parser.parse_args(argv)
    folders = args.folders or sorted(p.parent for p in (ROOT / "docs/results").glob(f"*/{RESULTS}"))
    for folder in folders:
        if not (folder / RESULTS).is_file():
            print(f"error: {folder} has no {RESULTS}; give a compare output folder", file=sys.stderr)
            return 2
        print(f"rebuilt {rebuild(folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
