"""The package as users install it: a wheel (not editable), run from outside the checkout.

Nothing generic lands at the top of site-packages (agents/ and envs/ install as rims_rl.agents and
rims_rl.envs), the ``rims-rl`` console script works, and a pretrained alias is found inside the
installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, cwd=out)
    (whl,) = out.glob("rims_rl-*.whl")
    return whl


def test_the_wheel_holds_only_the_rims_rl_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"rims_rl", next(t for t in tops if t.endswith(".dist-info"))}
    assert "rims_rl/agents/presets.yml" in names and "rims_rl/envs/suites.py" in names
    assert any(n.startswith("rims_rl/pretrained/doorkey-5x5-rims_ppo/") for n in names)
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "rims-rl = rims_rl.cli:run" in entry_points and "[rims_rl.cores]" in entry_points


def test_the_installed_script_evaluates_a_pretrained_alias_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(pip, check=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # The installed copy comes first on the path; the dependencies come from this interpreter's site-packages.
    env = {**os.environ, "PYTHONPATH": str(target), "RIMS_RL_PRETRAINED": ""}
    args = [
        "evaluate",
        "--checkpoint",
        "doorkey-5x5-rims_ppo",
        "--suite",
        "minigrid-doorkey",
        "--episodes",
        "1",
    ]
    probe = "import rims_rl, sys; print(rims_rl.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=outside, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    script = target / "bin" / "rims-rl"  # the console script pip wrote, run as a user would
    done = subprocess.run(
        [str(script), *args],
        env=env,
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(target / "rims_rl" / "pretrained" / "doorkey-5x5-rims_ppo") in done.stdout
    assert (outside / "runs" / "eval" / "doorkey-5x5-rims_ppo" / "eval-minigrid-doorkey.json").is_file()
