"""Commit-sized snapshot of long runs in progress: each run's learning curve (CSV + PNG) and status line.

The Atari campaign (issue 42) trains for many sessions; its run directories live under ``$RIMS_RL_RUNS``,
outside the checkout. What a reader of the repository sees of it between sessions is this snapshot:

    python experiments/campaign_snapshot.py ~/rims-rl-runs/compare-pong-cpu docs/results/atari-pong-cpu

writes ``<out>/<run>.csv`` (timesteps, rollout/ep_rew_mean), ``<out>/learning_curves.png`` (every run) and
``<out>/status.txt`` (``train.py status`` of each run), atomically. Optionally ``--pack`` also writes each
run's resume form (``train.py pack``, weights only: ~12 MiB for a Pong agent) for a lost machine.

Several sources put their runs side by side in one figure, each run named ``<source>-<run>`` (two
compares of one agent and seed that differ in one setting, such as the bf16 CNN's parity runs):

    python experiments/campaign_snapshot.py ~/rims-rl-runs/bf16-parity-fp32 ~/rims-rl-runs/bf16-parity-bf16 \
        docs/results/atari-bf16-parity
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rims_rl.app.atomic import atomic_write_bytes  # noqa: E402
from rims_rl.app.curves import read_learning_curve  # noqa: E402
from rims_rl.app.pack import pack_run  # noqa: E402
from rims_rl.app.plots import plot_learning_curves  # noqa: E402
from rims_rl.app.status import describe_run, find_run_dirs  # noqa: E402


def named_runs(sources: Sequence[Path]) -> list[tuple[Path, Path, str]]:
    """(source, run, name in the snapshot) for every run: its folder's name, ``<source>-<run>`` with several
    sources. ``ValueError`` when two runs would get one name."""
    runs = [(source, run) for source in sources for run in find_run_dirs(source)]
    named = [(s, r, r.name if len(sources) == 1 else f"{s.resolve().name}-{r.name}") for s, r in runs]
    names = [name for _, _, name in named]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"two runs would both be named {clash[0]}; give sources with different folder names")
    return named


def _shown(run: Path, source: Path) -> str:
    """``train.py status`` of ``run`` with its path shown from ``source``'s folder name on."""
    line = describe_run(run)
    prefix = str(source)
    return source.resolve().name + line[len(prefix) :] if line.startswith(prefix) else line


def snapshot(sources: str | Path | Sequence[str | Path], out: Path, pack: bool = False) -> list[Path]:
    """Write the snapshot of every run under ``sources`` into ``out``; return the files written."""
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    named = named_runs(paths)  # before any write: a name clash leaves ``out`` untouched
    written: list[Path] = []
    curves = {}
    for _, run, name in named:
        curve = read_learning_curve(run)
        if curve is not None:
            rows = "".join(f"{int(t)},{float(v):.6g}\n" for t, v in zip(*curve, strict=True))
            csv = ("timesteps,episode_return\n" + rows).encode()
            written.append(atomic_write_bytes(out / f"{name}.csv", csv))
            curves[name] = [curve]
        if pack:
            written.append(pack_run(run, out / f"{name}.resume.zip", optimizer="none"))
    status = [_shown(run, source) for source, run, _ in named]
    title = " vs ".join(source.resolve().name for source in paths)
    figure = plot_learning_curves(curves, out / "learning_curves.png", title=f"{title}: training return")
    if figure is not None:
        written.append(figure)
    written.append(atomic_write_bytes(out / "status.txt", ("\n".join(status) + "\n").encode()))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, nargs="+", help="compare (or run) directories of the campaign")
    parser.add_argument("out", type=Path, help="the folder to commit")
    parser.add_argument("--pack", action="store_true", help="also each run's resume form (weights only)")
    args = parser.parse_args(argv)
    for source in args.source:
        if not find_run_dirs(source):
            print(f"error: no runs under {source}; give a compare or run directory", file=sys.stderr)
            return 2
    try:
        written = snapshot(args.source, args.out, args.pack)
    except ValueError as err:  # two runs of one name
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
