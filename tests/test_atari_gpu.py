"""The GPU route of issue 27 works on its first try: its device command runs end to end here, on a CPU.

``experiments/gpu/run.sh`` is what a lent GPU machine runs (wheels carried, no network). Here it runs with
``--device cpu --tiny`` on a stand-in wheel, so everything but the GPU is exercised: the install into a
target folder, the dist-info that gives the core registry its entry points, the core benchmark, two Pong
runs side by side stopped at the deadline with a checkpoint, the summary, and the pieces that the device
tool copies back (at most 8 files of 16 MiB).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _probe_wheel(folder: Path) -> Path:
    """A pure-Python wheel standing in for the carried ones (theirs are built for the GPU's Python 3.12)."""
    folder.mkdir(parents=True)
    wheel = folder / "gpu_probe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("gpu_probe/__init__.py", "")
        z.writestr(
            "gpu_probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: gpu_probe\nVersion: 0.1\n"
        )
        z.writestr(
            "gpu_probe-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr("gpu_probe-0.1.dist-info/RECORD", "")
    return wheel


@pytest.mark.slow
def test_the_gpu_command_runs_end_to_end_on_a_cpu(tmp_path: Path) -> None:
    _probe_wheel(tmp_path / "wheels")
    out, site, work = tmp_path / "out", tmp_path / "site", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS": str(tmp_path / "wheels"), "SITE": str(site)}
    env["OUT"] = str(out)
    cmd = [
        "bash",
        "experiments/gpu/run.sh",
        "--device",
        "cpu",
        "--tiny",
        "--minutes",
        "1.3",
        "--work",
        str(work),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert (site / "gpu_probe" / "__init__.py").exists()  # the carried wheels were installed
    entry_points = next(site.glob("rims_rl-*.dist-info")) / "entry_points.txt"
    assert "[rims_rl.cores]" in entry_points.read_text() and "rims = " in entry_points.read_text()

    summary = json.loads((out / "summary.json").read_text())
    assert "nn.LSTM" in summary["bench"] or "lstm" in summary["bench"]
    assert "[exit" not in summary["bench"]  # the benchmark ran to its end
    runs = summary["runs"]
    assert sorted(runs) == ["lstm_ppo", "rims_ppo"]
    for agent, run in runs.items():
        assert run["timesteps"] and run["timesteps"] >= 256, (agent, run)  # at least one rollout each
        assert run["steps_per_s"] and run["steps_per_s"] > 0
        assert run["state"] == "interrupted" and run["exit"] == 130  # stopped at the deadline, resumable
        assert "--set" in run["command"] and "vec_env=ale" in run["command"]

    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= 8 and all((out / n).stat().st_size <= 16 * 2**20 for n in returned)
    parts = sorted(out.glob("runs.tar.gz.part-*"))
    assert parts
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        names = tar.getnames()
    for agent in ("lstm_ppo", "rims_ppo"):
        run = f"./pong-{agent}-s0"
        assert f"{run}/status.json" in names and f"{run}/config.json" in names
        assert len([n for n in names if n.startswith(f"{run}/checkpoints/step_")]) == 1  # the one to resume
    assert "logs/train-rims_ppo.log" in names
