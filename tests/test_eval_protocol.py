"""One evaluation protocol everywhere: a number from `evaluate`, `train --eval-episodes`, `make run`,
`compare`, `tune` and a model card's Load line is measured the same way, and sampled evaluation repeats."""

from __future__ import annotations

import inspect
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3 import PPO

from rims_rl import cli
from rims_rl.app.checkpoint import PRETRAINED_DIR, list_pretrained
from rims_rl.app.compare import CompareRequest
from rims_rl.app.evaluation import EVAL_PROTOCOL, evaluate_checkpoint, run_episodes
from rims_rl.app.records import RunJob
from rims_rl.app.tune import run_tune
from rims_rl.envs import EnvSpec, make_env

PROTOCOL = (EVAL_PROTOCOL.episodes, EVAL_PROTOCOL.deterministic, EVAL_PROTOCOL.seed)


def test_every_entry_point_defaults_to_the_protocol() -> None:
    parser = cli.build_parser()
    ev = parser.parse_args(["evaluate", "--checkpoint", "x"])
    assert (ev.episodes, ev.deterministic, ev.seed) == PROTOCOL
    for argv in (["compare"], ["tune", "--suite", "minigrid-doorkey"]):
        args = parser.parse_args(argv)
        assert (args.eval_episodes, args.deterministic) == PROTOCOL[:2], argv
    request = CompareRequest(agents=("ppo",), env="CartPole-v1")
    assert (request.eval_episodes, request.deterministic) == PROTOCOL[:2]
    job = RunJob(agent="ppo", seed=0, run_dir="r", timesteps=None, env_id="CartPole-v1")
    assert (job.eval_episodes, job.deterministic, job.eval_seed) == PROTOCOL
    assert cli.DEFAULT_EVAL_EPISODES == EVAL_PROTOCOL.episodes  # make run
    for fn, names in (
        (evaluate_checkpoint, ("n_episodes", "deterministic", "seed")),
        (run_episodes, (None, "deterministic", "seed")),
        (run_tune, ("eval_episodes", "deterministic", None)),
    ):
        params = inspect.signature(fn).parameters
        defaults = tuple(None if n is None else params[n].default for n in names)
        expected = tuple(None if n is None else v for n, v in zip(names, PROTOCOL, strict=True))
        assert defaults == expected, fn.__name__


def test_train_eval_episodes_scores_with_the_protocol(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "train_run", lambda *a, **k: tmp_path)

    def fake_eval(
        checkpoint: Any, target: Any, episodes: int, deterministic: bool, seed: int, out: Any, **kw: Any
    ) -> int:
        seen.update(episodes=episodes, deterministic=deterministic, seed=seed)
        return 0

    monkeypatch.setattr(cli, "_evaluate_and_print", fake_eval)
    assert cli.main(["train", "--env", "CartPole-v1", "--seed", "3", "--eval-episodes", "5"]) == 0
    assert (seen["episodes"], seen["deterministic"], seen["seed"]) == (5, *PROTOCOL[1:])


@pytest.mark.parametrize("alias", list_pretrained())
def test_a_cards_load_line_uses_the_cards_protocol(alias: str) -> None:
    card = json.loads((PRETRAINED_DIR / alias / "card.json").read_text())
    text = (PRETRAINED_DIR / alias / "MODEL_CARD.md").read_text()
    (line,) = re.findall(r"Load: `python train.py (evaluate [^`]+)`", text)
    args = cli.build_parser().parse_args(shlex.split(line))
    mode = "deterministic" if card["eval_deterministic"] else "stochastic"
    card_episodes = {ev[mode]["episodes"] for ev in card["evaluation"].values() if mode in ev}
    assert card_episodes == {args.episodes}
    assert (args.deterministic, args.seed) == (card["eval_deterministic"], card["eval_seed"])


def test_sampled_evaluation_repeats_exactly() -> None:
    # One untrained model (actions close to coin flips) scored twice without a reload in between: only the
    # evaluation seed can make the sampled episodes repeat.
    spec = EnvSpec("train", "CartPole-v1", {})
    model = PPO("MlpPolicy", make_env(spec), seed=0, device="cpu")
    before = torch.get_rng_state()
    first = run_episodes(model, spec, 8)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left as it was
    torch.rand(100)  # other work in between moves torch's generator
    assert run_episodes(model, spec, 8) == first
    assert run_episodes(model, spec, 8, seed=EVAL_PROTOCOL.seed + 1)[1] != first[1]  # the seed decides
