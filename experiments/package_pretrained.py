"""Copy a finished compare run into ``pretrained/<alias>/`` with a model card (card.json, MODEL_CARD.md) and
its learning curve (learning_curve.csv, learning_curve.png). The model ships without its optimizer state.

    python experiments/package_pretrained.py runs/compare-doorkey rims_ppo 1 doorkey-5x5-rims_ppo
    python experiments/package_pretrained.py runs/compare-doorkey rims_ppo median doorkey-5x5-rims_ppo

``median`` picks the seed whose training-env return is the median of the agent's seeds (the lower
median for an even count): a typical run, not the luckiest one.

The card's numbers are the compare's own evaluation of that run (``results.csv``; greedy or sampled
actions as the compare was run), plus a sampled one when ``<compare>/stochastic/<agent>-seed<k>/``
``eval*.json`` exists (train.py evaluate --stochastic --out ...). The alias then works everywhere
a checkpoint is taken:
``python train.py evaluate --checkpoint <alias> --suite <suite>``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from rims_rl.app.atomic import atomic_write_bytes, atomic_write_json
from rims_rl.app.checkpoint import read_meta
from rims_rl.app.curves import read_learning_curve
from rims_rl.app.evaluation import EVAL_PROTOCOL
from rims_rl.app.pack import slim_checkpoint
from rims_rl.app.plots import plot_learning_curves
from rims_rl.app.records import read_record, read_record_curve
from rims_rl.checks import safe_name
from rims_rl.envs.untrusted import UntrustedFileError, read_regular_file

ROOT = Path(__file__).resolve().parents[1]
#: Inputs read from the compare folder (reports, CSV, JSON): far larger is a damaged or hostile file.
MAX_INPUT_BYTES = 16 * 2**20


def _read_text(path: Path, what: str) -> str:
    """A regular file of at most ``MAX_INPUT_BYTES`` (a FIFO or ``/dev/zero`` is refused, never read)."""
    try:
        return read_regular_file(path, MAX_INPUT_BYTES, what).decode()
    except (UntrustedFileError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: {err}") from err


def without_optimizer(model_zip: Path) -> bytes:
    """The checkpoint minus the optimizer state (SB3's Adam moments: twice the weights, and only a resumed
    training needs them; the run directory keeps them), every other member as it was: an Atari agent's
    40 MB becomes its 13 MB of weights, which loads everywhere a full checkpoint does."""
    return slim_checkpoint(model_zip, "none")


def _train_returns(compare_dir: Path, agent: str) -> list[tuple[float, int]]:
    """(final training-env return, seed) of every run of ``agent``, ascending."""
    returns = sorted(
        (float(r["mean_return"]), int(r["seed"]))
        for r in csv.DictReader(io.StringIO(_read_text(compare_dir / "results.csv", "results")))
        if r["agent"] == agent and r["is_train"] == "True"
    )
    if not returns:
        raise SystemExit(f"no training-env results of {agent} in {compare_dir / 'results.csv'}")
    return returns


def median_selection(compare_dir: Path, agent: str) -> tuple[int, str]:
    """The (lower) median seed of ``agent`` by final training-env return, and how it was chosen, for the
    card: a reader should see it is not the best run."""
    returns = _train_returns(compare_dir, agent)
    listed = ", ".join(f"seed {seed}: {ret:.2f}" for ret, seed in returns)
    how = f"the median of {len(returns)} seeds by training-env return, not the best ({listed})"
    return returns[(len(returns) - 1) // 2][1], how


def rank_selection(compare_dir: Path, agent: str, seed: int) -> str:
    """Where a seed given by hand ranks among the agent's runs, for the card (1 = the lowest return)."""
    returns = _train_returns(compare_dir, agent)
    seeds = [s for _, s in returns]
    if seed not in seeds:
        raise SystemExit(f"no training-env result of {agent} seed {seed} in {compare_dir / 'results.csv'}")
    listed = ", ".join(f"seed {s}: {ret:.2f}" for ret, s in returns)
    rank = seeds.index(seed) + 1
    return f"seed {seed}, rank {rank} of {len(seeds)} by training-env return, lowest first ({listed})"


def package(
    compare_dir: Path, agent: str, seed: int, alias: str, selection: str = "", root: Path = ROOT
) -> Path:
    """Write ``<root>/pretrained/<alias>`` (model, card, learning curve) and return it."""
    if alias != safe_name(alias):  # never a path: nothing is written outside pretrained/
        raise SystemExit(f"error: alias {alias!r} must be one plain folder name (letters, digits, . _ -)")
    run_dir = compare_dir / "runs" / f"{agent}-seed{seed}"
    meta = read_meta(run_dir / "model.zip")
    config = meta.config.to_dict()
    rows = [
        r
        for r in csv.DictReader(io.StringIO(_read_text(compare_dir / "results.csv", "results")))
        if r["agent"] == agent and int(r["seed"]) == seed
    ]
    if not rows:
        raise SystemExit(f"no results of {agent} seed {seed} in {compare_dir / 'results.csv'}")
    mode = (
        "deterministic"
        if "deterministic_eval=True" in _read_text(compare_dir / "report.md", "report")
        else "stochastic"
    )

    def scores(episodes: Any, mean_return: Any, success_rate: Any) -> dict[str, Any]:
        # Families without a success signal (Atari, POPGym) leave it empty in results.csv, null in JSON.
        success = None if success_rate in (None, "") else round(float(success_rate), 4)
        return {
            "episodes": int(episodes),
            "mean_return": round(float(mean_return), 4),
            "success_rate": success,
        }

    # Keyed by the suite's env name: variants may share an id and differ in kwargs (Atari modes).
    evaluation: dict[str, dict[str, Any]] = {
        r["env"]: {"env_id": r["env_id"], mode: scores(r["n_episodes"], r["mean_return"], r["success_rate"])}
        for r in rows
    }
    train_name = next(r["env"] for r in rows if r["is_train"] == "True")
    for stochastic in sorted((compare_dir / "stochastic" / f"{agent}-seed{seed}").glob("eval*.json")):
        for r in json.loads(_read_text(stochastic, "evaluation")):
            entry = evaluation.setdefault(r.get("env", r["env_id"]), {"env_id": r["env_id"]})
            entry["stochastic"] = scores(r["episodes"], r["mean_return"], r["success_rate"])
    episodes = sorted({ev[mode]["episodes"] for ev in evaluation.values() if mode in ev})
    record = read_record(run_dir) if (compare_dir / "records").is_dir() else None
    eval_seed = (
        record.settings.get("eval_seed", EVAL_PROTOCOL.seed) if record is not None else EVAL_PROTOCOL.seed
    )
    train_env = config["env"]["env_id"]
    card = {
        "alias": alias,
        "agent": agent,
        "train_env": train_env,
        "suite": config.get("suite"),
        "seed": seed,
        "timesteps": meta.num_timesteps,
        "eval_seed": eval_seed,
        "eval_deterministic": mode == "deterministic",
        "command": _read_text(compare_dir / "report.md", "report").split("```")[1].strip(),
        "selection": selection or f"seed {seed}, chosen by hand",
        "config": config["model"],
        "evaluation": evaluation,
        # what tests/test_pretrained.py reproduces: the compare's own mode, training env
        "success_rate": evaluation[train_name][mode]["success_rate"],
        "mean_return": evaluation[train_name][mode]["mean_return"],
    }
    out = root / "pretrained" / alias
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.zip", without_optimizer(run_dir / "model.zip"))
    atomic_write_json(out / "card.json", card)
    curve = read_record_curve(run_dir) or read_learning_curve(run_dir)
    curve_lines: list[str] = []
    for stale in ("learning_curve.csv", "learning_curve.png"):  # from an earlier packaging of the alias
        (out / stale).unlink(missing_ok=True)
    if curve is not None and len(curve[0]):
        rows_csv = "".join(f"{int(t)},{float(v):.6g}\n" for t, v in zip(*curve, strict=True))
        atomic_write_bytes(out / "learning_curve.csv", ("timesteps,episode_return\n" + rows_csv).encode())
        plot_learning_curves({agent: [curve]}, out / "learning_curve.png", title=f"{alias}: training return")
        curve_lines = [
            "Learning curve (mean return of the last training episodes, `rollout/ep_rew_mean`; the data:",
            "`learning_curve.csv`):",
            "",
            "![learning curve](learning_curve.png)",
            "",
        ]
    shown = "/".join(map(str, episodes))
    lines = [
        f"# {alias}",
        "",
        f"`{agent}` trained on `{train_env}` for {card['timesteps']} steps (seed {seed}), by:",
        "",
        f"    {card['command']}",
        "",
        f"Seed: {card['selection']}.",
        "",
        "Training settings: " + _settings(config["model"]) + ".",
        "",
        *curve_lines,
        f"Evaluation ({shown} episodes per env, episode seed {eval_seed}; success = an episode with a "
        "positive return, where the family defines one, such as MiniGrid's goal reached; '-' where it "
        "does not, as on Atari):",
        "",
        "| env | id | deterministic return | deterministic success | stochastic return "
        "| stochastic success |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, ev in evaluation.items():
        d, st = ev.get("deterministic", {}), ev.get("stochastic", {})
        cells = [d.get("mean_return"), d.get("success_rate"), st.get("mean_return"), st.get("success_rate")]
        lines.append(
            f"| {name} | {ev['env_id']} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |"
        )
    lines += [
        "",
        f"Load: `python train.py evaluate --checkpoint {alias} --suite {card['suite'] or train_env}"
        + (" --deterministic" if card["eval_deterministic"] else "")
        + (f" --episodes {episodes[-1]}" if episodes[-1] != EVAL_PROTOCOL.episodes else "")
        + f"` (the card's protocol: {episodes[-1]} episodes per env from seed {eval_seed}, "
        + ("greedy actions)" if card["eval_deterministic"] else "sampled actions)"),
        "(safe by default: rebuilt from the JSON config in the zip, tensors read with weights_only=True).",
        "",
    ]
    atomic_write_bytes(out / "MODEL_CARD.md", "\n".join(lines).encode())
    return out


def _settings(model: dict) -> str:
    """The settings the fair-comparison tuning chooses among, as the card's one line."""
    ppo, policy_kwargs = model.get("ppo", {}), model.get("policy_kwargs", {})
    chunks = ppo.get("chunk_length")
    return ", ".join(
        [
            f"learning rate {ppo.get('learning_rate')}",
            "critic gradient through the shared core"
            if policy_kwargs.get("critic_grad_through_core")
            else "no critic gradient through the core",
            f"minibatches of {chunks}-step chunks" if chunks else "minibatches of whole rollout sequences",
        ]
    )


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    compare, agent_name, which, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if which == "median":
        chosen, how = median_selection(compare, agent_name)
    else:
        chosen = int(which)
        how = rank_selection(compare, agent_name, chosen)
    print(package(compare, agent_name, chosen, name, how))
