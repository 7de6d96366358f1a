"""Shipped checkpoints load safely by alias and reproduce their model card; the activation plot runs."""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rims_rl.app import pack
from rims_rl.app.checkpoint import PRETRAINED_DIR, list_pretrained
from rims_rl.app.errors import UserError
from rims_rl.app.evaluation import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ALIASES = list_pretrained()
N_EPISODES = 8  # the first episode of each of the card's 8 evaluation envs: a subset of its episodes


def _card(alias: str) -> dict:
    return json.loads((PRETRAINED_DIR / alias / "card.json").read_text())


def test_both_cores_are_shipped() -> None:
    cores = {_card(a)["agent"] for a in ALIASES}
    assert {"rims_ppo", "lstm_ppo"} <= cores, ALIASES
    assert {"pong-lstm_ppo", "pong-rims_ppo"} <= set(ALIASES)  # issue 42: the Atari agents
    # issue 40: an agent for every core (and the feed-forward control) on a memory suite
    repeat = {_card(a)["agent"] for a in ALIASES if _card(a)["suite"] == "popgym-repeat-previous"}
    assert repeat == {"ppo", "lstm_ppo", "gru_ppo", "rims_ppo", "tlb_ppo", "assembly_ppo"}, repeat


@pytest.mark.parametrize("alias", ALIASES)
def test_checkpoint_is_small_and_reproduces_its_card(alias: str) -> None:
    card = _card(alias)
    # MiB: an Atari CNN's weights alone are 13 MB; MiniGrid agents are a fraction of one
    limit = 16 if card["config"]["family"] == "atari" else 5
    assert (PRETRAINED_DIR / alias / "model.zip").stat().st_size < limit * 2**20
    atari = card["config"]["family"] == "atari"
    (result,) = evaluate_checkpoint(
        alias,
        card["train_env"],
        n_episodes=4 if atari else N_EPISODES,  # a Pong episode is thousands of steps: 4 take ~25 s
        seed=card["eval_seed"],
        deterministic=card["eval_deterministic"],
    )
    assert result.num_timesteps == card["timesteps"]
    if atari:  # no success signal; Pong's return lies in [-21, 21]
        # The episodes from the card's seed are fixed, so this is no coin flip; the margin is for other
        # library versions. An untrained or broken Pong agent scores about -20.
        assert abs(result.mean_return - card["mean_return"]) <= 8.0, (result.mean_return, card["mean_return"])
    elif card["success_rate"] is None:  # POPGym: returns in [-1, 1]; chance on RepeatPrevious is -0.5
        # 8 of the card's 32 episodes per env: a trained agent (0.6-0.9) that broke would read about -0.5
        assert abs(result.mean_return - card["mean_return"]) <= 0.25, (result.mean_return, card)
    else:
        assert abs(result.success_rate - card["success_rate"]) <= 0.3, (result.success_rate, card)


def test_activation_heatmap_of_a_shipped_rims_agent(tmp_path: Path) -> None:
    rims = [a for a in ALIASES if _card(a)["agent"] == "rims_ppo"]
    from activations import main  # experiments/ is on pytest's pythonpath (pyproject)

    assert main(["--checkpoint", rims[0], "--out", str(tmp_path), "--max-steps", "40", "--stochastic"]) == 0
    (summary_file,) = tmp_path.glob("activations-*.json")
    summary = json.loads(summary_file.read_text())
    mask = np.array(summary["mask"])
    k = _card(rims[0])["config"]["policy_kwargs"]["rims_kwargs"]["k"]
    assert mask.shape[0] == summary["steps"] >= 1
    assert (mask.sum(axis=1) == k).all()  # exactly k units active at every step
    assert (tmp_path / summary_file.name.replace(".json", ".png")).stat().st_size > 0


def test_video_of_a_shipped_agent_has_one_frame_per_step_plus_the_last(tmp_path: Path) -> None:
    from PIL import Image

    from rims_rl.app.evaluation import load_for_eval, record_gif
    from rims_rl.envs import EnvSpec

    alias = ALIASES[0]
    spec = EnvSpec("train", _card(alias)["train_env"], {})
    model, _ = load_for_eval(alias, spec)
    (gif,) = record_gif(model, spec, tmp_path, n_episodes=1, max_frames=6)
    with Image.open(gif) as image:
        # 5 steps (the episode outlasts them) + the final state, 100 ms each; Pillow merges identical
        # consecutive frames (a turn in place can look the same), so count time, not frames.
        durations = []
        for index in range(image.n_frames):
            image.seek(index)
            durations.append(image.info["duration"])
        assert sum(durations) == 600, durations


def test_median_seed_picks_the_typical_run_not_the_best(tmp_path: Path) -> None:
    import csv
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "package_pretrained.py"
    spec = importlib.util.spec_from_file_location("package_pretrained", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields = ["agent", "seed", "is_train", "mean_return"]
    with (tmp_path / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for seed, ret in enumerate([0.9, 0.1, 0.5, 0.7]):  # sorted: 0.1 (s1), 0.5 (s2), 0.7 (s3), 0.9 (s0)
            writer.writerow({"agent": "a", "seed": seed, "is_train": "True", "mean_return": ret})
            writer.writerow({"agent": "a", "seed": seed, "is_train": "False", "mean_return": 1 - ret})
        writer.writerow({"agent": "b", "seed": 0, "is_train": "True", "mean_return": 0.3})
    seed, selection = module.median_selection(tmp_path, "a")
    assert seed == 2  # the lower median of four
    assert module.median_selection(tmp_path, "b")[0] == 0
    assert selection.startswith("the median of 4 seeds") and "seed 2: 0.50" in selection, selection
    # a seed given by hand (e.g. a median seed re-trained) says where it ranks
    assert module.rank_selection(tmp_path, "a", 3).startswith("seed 3, rank 3 of 4 by training-env return")
    assert module.rank_selection(tmp_path, "a", 1).startswith("seed 1, rank 1 of 4")
    with pytest.raises(SystemExit, match="no training-env result of a seed 9"):
        module.rank_selection(tmp_path, "a", 9)


def test_pretrained_lookup_order(tmp_path, monkeypatch) -> None:
    """``$RIMS_RL_PRETRAINED`` wins; else the installed package's folder; else the checkout's."""
    from rims_rl.app import checkpoint

    monkeypatch.setenv("RIMS_RL_PRETRAINED", str(tmp_path))
    assert checkpoint._pretrained_dir() == tmp_path
    monkeypatch.delenv("RIMS_RL_PRETRAINED")
    checkout = Path(checkpoint.__file__).resolve().parents[2] / "pretrained"
    assert checkpoint._pretrained_dir() == checkout  # an editable install has no rims_rl/pretrained


@pytest.mark.parametrize("family", ["minigrid", "popgym"])
def test_a_packaged_run_keeps_every_variant_and_its_learning_curve(tmp_path: Path, family: str) -> None:
    """Variants that share an env id and differ in kwargs (Atari's modes, POPGym's decks) each keep
    their row on the card, with the episodes the compare ran; a family without a success signal shows
    '-', not a crash; the learning curve ships beside the model."""
    import importlib.util
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if family == "minigrid":
        suite = tmp_path / "sizes.yml"
        suite.write_text(
            "name: sizes\ntrain: {id: MiniGrid-DoorKey-5x5-v0}\nvariants:\n"
            "  - {name: six, id: MiniGrid-DoorKey-5x5-v0, kwargs: {size: 6}}\n"
            "  - {name: seven, id: MiniGrid-DoorKey-5x5-v0, kwargs: {size: 7}}\n"
        )
        target, names, env_id, steps = str(suite), ["train", "six", "seven"], "MiniGrid-DoorKey-5x5-v0", "768"
        # 768 steps: 384 per env, past DoorKey-5x5's 250-step limit, so episodes end and a curve is logged
    else:
        target, env_id, steps = "popgym-repeat-previous", "popgym-RepeatPrevious-v0", "256"
        names = ["train", "decks-4", "decks-16", "decks-32"]
    argv = ["compare", "--suite", target, "--agents", "lstm_ppo", "--seeds", "1", "--timesteps", steps]
    argv += ["--n-envs", "2", "--set", "ppo.n_steps=32", "--set", "ppo.batch_size=32", "--eval-episodes", "3"]
    argv += ["--out", str(tmp_path / "c")]
    subprocess.run([sys.executable, str(root / "train.py"), *argv], cwd=root, check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location(
        "package_pretrained_b", root / "experiments" / "package_pretrained.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.package(tmp_path / "c", "lstm_ppo", 0, "packaged", root=tmp_path)
    card = json.loads((out / "card.json").read_text())
    assert list(card["evaluation"]) == names
    assert {ev["env_id"] for ev in card["evaluation"].values()} == {env_id}
    assert {ev["stochastic"]["episodes"] for ev in card["evaluation"].values()} == {3}
    assert card["success_rate"] == card["evaluation"]["train"]["stochastic"]["success_rate"]
    assert card["mean_return"] == card["evaluation"]["train"]["stochastic"]["mean_return"]
    assert (card["success_rate"] is None) == (family == "popgym")
    text = (out / "MODEL_CARD.md").read_text()
    assert f"| {names[-1]} | {env_id} |" in text and "(3 episodes per env, episode seed 10000" in text
    if family == "popgym":
        assert text.count(" | - |") >= len(names)  # no success rate: '-', as for the mode not run
    curve = (out / "learning_curve.csv").read_text().splitlines()
    assert curve[0] == "timesteps,episode_return" and len(curve) > 1
    # shipped without the optimizer state, and the same agent: the packaged zip scores as the run's does
    with zipfile.ZipFile(out / "model.zip") as shipped:
        assert "policy.optimizer.pth" not in shipped.namelist()
        assert "policy.pth" in shipped.namelist()
    run_zip = tmp_path / "c" / "runs" / "lstm_ppo-seed0" / "model.zip"
    assert (out / "model.zip").stat().st_size < run_zip.stat().st_size
    episodes = {"n_episodes": 2, "seed": 7, "deterministic": False}
    packaged = evaluate_checkpoint(out / "model.zip", **episodes)  # on the env it was trained on
    original = evaluate_checkpoint(run_zip, **episodes)
    assert [r.mean_return for r in packaged] == [r.mean_return for r in original]
    assert (out / "learning_curve.png").read_bytes()[
        :8
    ] == b"\x89PNG\r\n\x1a\n" and "learning_curve.png" in text
    if family == "popgym":  # issue 40.5: a re-trained median seed ships with how it was chosen
        from rerun_median import package_all  # experiments/ is on pytest's pythonpath (pyproject)

        median = {"from": "x/10seeds", "seeds": {"lstm_ppo": 0}}
        (tmp_path / "c" / "median.json").write_text(json.dumps(median))
        (shipped,) = package_all(tmp_path / "c", "rp", root=tmp_path)
        assert shipped == tmp_path / "pretrained" / "rp-lstm_ppo"
        selection = json.loads((shipped / "card.json").read_text())["selection"]
        assert "runs in x/10seeds, re-trained" in selection and "seed 0, rank 1 of 1" in selection


def test_evaluation_shows_episodes_done_per_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 40.2: a suite evaluation counts its episodes env by env on a progress bar (tqdm, which
    stays silent off a terminal), so minutes of evaluation are never silent."""
    from rims_rl.app import evaluation

    seen: list[tuple[str, int]] = []

    class Bar:
        def __init__(self, total: int, disable: bool | None, **kw: object) -> None:
            self.total, self.disable, self.desc = total, disable, ""

        def set_description(self, desc: str) -> None:
            self.desc = desc

        def update(self, n: int = 1) -> None:
            seen.append((self.desc, n))

        def close(self) -> None:
            seen.append(("closed", self.total))

    monkeypatch.setattr(evaluation, "tqdm", Bar)
    results = evaluate_checkpoint(ALIASES[0], "minigrid-doorkey", n_episodes=2, progress=True)
    names = [r.env for r in results]
    assert seen[-1] == ("closed", 2 * len(names))
    assert [d for d, _ in seen[:-1]] == [f"evaluating {n}" for n in names for _ in range(2)]


def test_packaging_reads_bounded_regular_files_and_writes_only_under_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 39.5: an alias that is a path, and a compare folder whose files are a device, a FIFO or a
    zip bomb, each end with one line, never a hang, a memory blow-up or a write outside pretrained/."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "package_pretrained.py"
    spec = importlib.util.spec_from_file_location("package_pretrained_c", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for alias in ("../escaped", "a/b", ".."):
        with pytest.raises(SystemExit, match="one plain folder name"):
            module.package(tmp_path, "lstm_ppo", 0, alias, root=tmp_path)
    assert not (tmp_path / "escaped").exists()
    (tmp_path / "zero.md").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.md")
    for name in ("zero.md", "fifo.md"):
        with pytest.raises(SystemExit, match="not a regular file"):
            module._read_text(tmp_path / name, "report")
    monkeypatch.setattr(
        pack, "MAX_MEMBER_BYTES", 1024
    )  # the cap, scaled down: 2 KiB of zeros inflate past it
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("policy.pth", b"\0" * 2048)
    with pytest.raises(UserError, match="larger than"):
        module.without_optimizer(bomb)


def test_rerun_median_leaves_out_only_the_median_seeds_records(tmp_path: Path) -> None:
    """Issue 40.5: compare, given the other records, re-trains exactly each agent's median seed."""
    import csv
    import importlib.util
    import sys

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(experiments))  # rerun_median imports package_pretrained as its neighbour
    try:
        spec = importlib.util.spec_from_file_location("rerun_median", experiments / "rerun_median.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(experiments))
    committed = tmp_path / "committed"
    (committed / "records").mkdir(parents=True)
    with (committed / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["agent", "seed", "is_train", "mean_return"])
        writer.writeheader()
        for agent, returns in (("a", [0.9, 0.1, 0.5]), ("b", [0.2, 0.4, 0.3])):
            for seed, ret in enumerate(returns):
                writer.writerow({"agent": agent, "seed": seed, "is_train": "True", "mean_return": ret})
                (committed / "records" / f"{agent}-seed{seed}.json").write_text("{}")
    command = "python train.py compare --agents a b --seeds 3 --out x"
    (committed / "report.md").write_text(f"Command:\n\n```\n{command}\n```\n")
    seeds, command = module.prepare(committed, tmp_path / "out", [])
    assert seeds == {"a": 2, "b": 2}  # 0.5 and 0.3: the medians
    assert sorted(p.name for p in (tmp_path / "out" / "records").iterdir()) == [
        "a-seed0.json", "a-seed1.json", "b-seed0.json", "b-seed1.json"
    ]
    assert command == f"python train.py compare --agents a b --seeds 3 --out {tmp_path / 'out'}"
    assert json.loads((tmp_path / "out" / "median.json").read_text())["seeds"] == seeds
