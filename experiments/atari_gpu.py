"""Issue 27's GPU route: one command that spends a lent GPU machine's minutes on the work, not on set-up.

In ``--minutes`` (default 8) of wall time it

1. times every registered core against ``nn.LSTM`` (cuDNN on CUDA) with ``benchmarks/bench_core.py``,
   capped at ``--bench-seconds``;
2. trains each agent of ``--agents`` (default rims_ppo and lstm_ppo) on ``ALE/<game>-v5`` at once, each in
   its own process with ale-py's threaded vector env (``vec_env=ale``) and ``--n-envs`` envs (default: the
   CPU cores split between the agents); at the deadline each gets Ctrl-C, so it saves a checkpoint and
   stops as a resumable run (``train.py train --resume DIR`` continues it here or on a CPU);
3. writes into ``--out``: ``summary.md`` / ``summary.json`` (the machine, the benchmark's output, steps
   reached, steps/s and learning curve per agent) and the run directories, with only the checkpoint a
   resume needs, as ``runs.tar.gz.part-NN`` (split so each piece fits what the device tool copies back:
   at most 8 files of 16 MiB).

Nothing is downloaded: the machine has no network. Its Python lacks gymnasium, SB3 and ale-py, so they
travel as wheels (``experiments/gpu/fetch_wheels.sh`` here, once) and ``experiments/gpu/run.sh`` installs
them before calling this script. On a CPU the same command runs with ``--device cpu --minutes 1
--tiny``, which is how tests/test_atari_gpu.py checks it before any GPU time is spent.

Back here: ``cat OUT/runs.tar.gz.part-* | tar -xz -C runs/`` restores the run directories.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rims_rl.app.curves import read_learning_curve

ROOT = Path(__file__).resolve().parents[1]
#: Seconds kept back at the end for stopping the runs (a checkpoint each) and packing the results; a
#: ``--tiny`` run on a CPU keeps less, since its checkpoints are small.
RESERVE_S = 75.0
TINY_RESERVE_S = 30.0


@dataclass
class Args:
    """One GPU session's plan; every field is a command-line flag of the same name."""

    out: Path
    """Folder the device tool copies back ($OUT there); only the summary files and the parts land in it."""
    work: Path = Path("/tmp/atari_gpu")
    """Scratch folder for the run directories (not copied back as such: they are packed into ``out``)."""
    minutes: float = 8.0
    """Wall-clock budget for the whole script, set-up to packing."""
    game: str = "Pong"
    """ALE game name; the env is ``ALE/<game>-v5`` with the atari presets (frame stack 4)."""
    agents: list[str] = field(default_factory=lambda: ["rims_ppo", "lstm_ppo"])
    """Agents trained side by side, one process each."""
    device: str = "cuda"
    """torch device of the cores and the CNN."""
    n_envs: int = 0
    """Envs per agent; 0: the CPU cores divided between the agents."""
    seed: int = 0
    """Training seed of every agent."""
    timesteps: int = 10_000_000
    """Budget each run is created with; the deadline usually stops it first, as a resumable run."""
    bench_seconds: float = 90.0
    """Cap on the core benchmark."""
    tiny: bool = False
    """CPU smoke test: a small core benchmark and 2 envs, so a test can run the whole path in a minute."""
    part_mib: int = 15
    """Size of each piece of the packed run directories."""


def parse_args(argv: list[str] | None = None) -> Args:
    """Flags from ``Args``' fields, with their defaults."""
    defaults = Args(out=Path("."))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=defaults.work)
    p.add_argument("--minutes", type=float, default=defaults.minutes)
    p.add_argument("--game", default=defaults.game)
    p.add_argument("--agents", nargs="+", default=defaults.agents)
    p.add_argument("--device", choices=["cuda", "cpu"], default=defaults.device)
    p.add_argument("--n-envs", type=int, default=defaults.n_envs)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--timesteps", type=int, default=defaults.timesteps)
    p.add_argument("--bench-seconds", type=float, default=defaults.bench_seconds)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--part-mib", type=int, default=defaults.part_mib)
    ns = p.parse_args(argv)
    reserve = TINY_RESERVE_S if ns.tiny else RESERVE_S
    if ns.minutes * 60 <= reserve + 15:
        p.error(f"--minutes {ns.minutes}: leaves no time to train after the {reserve:.0f} s kept for packing")
    if ns.n_envs < 0 or ns.part_mib < 1 or ns.timesteps < 1:
        p.error("--n-envs must be >= 0, --part-mib and --timesteps >= 1")
    return Args(**vars(ns))


def machine_info(device: str) -> dict[str, object]:
    """What the numbers were measured on (written first, so even a failed session says where it ran)."""
    import torch

    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "device": device,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_bench(args: Args) -> str:
    """The core benchmark's output at issue 43's shapes (PPO's chunks, B=8 x T=32, and B=64 x T=128, width
    192, with the no-grad rollout step), or what it printed before the cap, which all shapes share."""
    ppo_shapes = [["--T", "32", "--B", "8"], ["--T", "128", "--B", "64"]]
    shapes = [["--T", "8", "--B", "4"]] if args.tiny else ppo_shapes
    size = ["--hidden", "18", "--repeats", "1"] if args.tiny else ["--hidden", "192", "--repeats", "3"]
    deadline = time.monotonic() + args.bench_seconds
    texts = []
    for i, shape in enumerate(shapes):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--devices", args.device]
        cmd += ["--cells", "lstm", *shape, *size, "--modular"]
        cmd += ["--rollout"] if i == 0 else []  # the rollout step (T=1, B=16) is the same at every shape
        left = deadline - time.monotonic()
        if left <= 1:
            texts.append(f"$ {' '.join(cmd)}\n[not run: the {args.bench_seconds:.0f} s cap was spent]\n")
            continue
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=ROOT)
            failed = f"\n[exit {done.returncode}]\n{done.stderr[-2000:]}" if done.returncode else ""
            text = done.stdout + failed
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            text = out + f"\n[stopped at the {args.bench_seconds:.0f} s cap]\n"
        texts.append(f"$ {' '.join(cmd)}\n{text}")
    return "\n".join(texts)


def train_cmd(args: Args, agent: str, run_dir: Path, n_envs: int) -> list[str]:
    """The ``train.py`` command of one agent (recorded in the summary, so a CPU session can repeat it)."""
    return [
        sys.executable, str(ROOT / "train.py"), "train",
        "--agent", agent, "--env", f"ALE/{args.game}-v5",
        "--device", args.device, "--n-envs", str(n_envs), "--seed", str(args.seed),
        "--timesteps", str(args.timesteps), "--set", "vec_env=ale",
        "--run-dir", str(run_dir), "--checkpoint-every", str(max(n_envs * 128, args.timesteps // 100)),
        "--eval-episodes", "0", "--no-progress",
    ]  # fmt: skip


def reserve_s(args: Args) -> float:
    """Seconds kept back at the end (``RESERVE_S``)."""
    return TINY_RESERVE_S if args.tiny else RESERVE_S


def train_until(args: Args, deadline: float) -> dict[str, dict[str, object]]:
    """Train every agent at once until it finishes or the deadline; then Ctrl-C, which checkpoints."""
    cores = os.cpu_count() or 1
    n_envs = args.n_envs or (2 if args.tiny else max(1, cores // len(args.agents)))
    threads = max(1, cores // (2 * len(args.agents)))  # the other half of the cores step the emulators
    procs: dict[str, tuple[subprocess.Popen[bytes], Path, list[str], float]] = {}
    logs = []
    for agent in args.agents:
        run_dir = args.work / "runs" / f"{args.game.lower()}-{agent}-s{args.seed}"
        cmd = train_cmd(args, agent, run_dir, n_envs)
        if (run_dir / "status.json").exists():  # a run left by an earlier call: continue it
            cmd = [*cmd[:3], "--resume", str(run_dir), "--device", args.device, "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        log = (args.work / f"train-{agent}.log").open("ab")
        logs.append(log)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        procs[agent] = (proc, run_dir, cmd, time.time())
    while time.time() < deadline and any(p.poll() is None for p, *_ in procs.values()):
        time.sleep(2)
    for proc, *_ in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # stop at the next step, save a checkpoint, exit 130
    results: dict[str, dict[str, object]] = {}
    for agent, (proc, run_dir, cmd, started) in procs.items():
        try:
            code = proc.wait(timeout=reserve_s(args) * 0.6)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        results[agent] = {"exit": code, "wall_s": round(time.time() - started, 1), "command": cmd,
                          "run_dir": run_dir.name, "n_envs": n_envs, "torch_threads": threads,
                          **run_progress(run_dir)}  # fmt: skip
    for log in logs:
        log.close()
    return results


def run_progress(run_dir: Path) -> dict[str, object]:
    """Steps reached, the last steps/s SB3 logged and the learning curve of one run directory."""
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
    fps = None
    for csv_path in sorted((run_dir / "logs").glob("progress*.csv")):
        lines = csv_path.read_text().splitlines()
        if len(lines) > 1:
            header = lines[0].split(",")
            if "time/fps" in header:
                value = lines[-1].split(",")[header.index("time/fps")]
                fps = float(value) if value else fps
    curve = read_learning_curve(run_dir)
    return {
        "state": status.get("state"),
        "timesteps": status.get("num_timesteps"),
        "steps_per_s": fps,
        "curve": None
        if curve is None
        else {"steps": curve[0].tolist(), "values": np.round(curve[1], 3).tolist()},
    }


def stale_checkpoints(runs: Path) -> set[Path]:
    """Checkpoints a resume does not need: all but the newest of each run, all of a finished one (each
    is tens of MiB with its optimiser state, and only 8 files of 16 MiB come back from the device)."""
    stale: set[Path] = set()
    for run_dir in runs.iterdir():
        zips = sorted((run_dir / "checkpoints").glob("step_*.zip"), key=lambda z: int(z.stem[5:]))
        keep = [] if (run_dir / "model.zip").exists() else zips[-1:]
        stale.update(z for z in zips if z not in keep)
    return stale


def pack(args: Args) -> list[Path]:
    """The run directories as one gzipped tar, cut into ``part_mib`` pieces in ``out``."""
    tar_path = args.work / "runs.tar.gz"
    runs = args.work / "runs"
    stale = {str(z.relative_to(runs)) for z in stale_checkpoints(runs)}
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(runs, arcname=".", filter=lambda ti: None if ti.name.removeprefix("./") in stale else ti)
        for log in sorted(args.work.glob("train-*.log")):
            tar.add(log, arcname=f"logs/{log.name}")
    data, size = tar_path.read_bytes(), args.part_mib * 2**20
    parts = []
    for i in range(0, len(data), size):
        part = args.out / f"runs.tar.gz.part-{i // size:02d}"
        part.write_bytes(data[i : i + size])
        parts.append(part)
    return parts


def summary_md(info: dict[str, object], results: dict[str, dict[str, object]], args: Args) -> str:
    """The table a closing note quotes: steps, steps/s and the last logged return of each agent."""
    lines = [
        f"# {args.game} on {info.get('gpu', info['device'])}, {args.minutes} min budget",
        "",
        f"torch {info['torch']}, {info['cpu_count']} CPU cores, {info['time']}",
        "",
        "| agent | steps | steps/s (SB3 time/fps) | last ep_rew_mean | state | exit |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for agent, r in results.items():
        curve = r["curve"]
        last = curve["values"][-1] if isinstance(curve, dict) and curve["values"] else None
        lines.append(
            f"| {agent} | {r['timesteps']} | {r['steps_per_s']} | {last} | {r['state']} | {r['exit']} |"
        )
    lines += ["", "Commands (resume any run with `train.py train --resume DIR`):", ""]
    lines += [f"    {' '.join(map(str, r['command']))}" for r in results.values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    deadline = start + args.minutes * 60 - reserve_s(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device)
    (args.out / "summary.json").write_text(
        json.dumps({"machine": info}, indent=1)
    )  # a failed call says where
    bench = run_bench(args)
    (args.out / "summary.md").write_text(f"# core benchmark\n\n```\n{bench}```\n")
    print(bench, flush=True)
    results = train_until(args, deadline)
    (args.out / "summary.json").write_text(
        json.dumps(
            {
                "machine": info,
                "args": {k: str(v) for k, v in asdict(args).items()},
                "bench": bench,
                "runs": results,
            },
            indent=1,
        )
    )
    text = summary_md(info, results, args) + f"\n# core benchmark\n\n```\n{bench}```\n"
    (args.out / "summary.md").write_text(text)
    print(text)
    parts = pack(args)
    print(f"packed {len(parts)} part(s) in {time.time() - start:.0f} s total")
    return 0 if all(r["timesteps"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
