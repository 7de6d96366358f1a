"""End-to-end PPO training throughput: each recurrent agent vs stock sb3-contrib LSTM-PPO.

Usage:
    python benchmarks/bench_ppo.py                       # MiniGrid DoorKey-5x5, 4 rollouts each
    python benchmarks/bench_ppo.py --atari               # also ALE/Breakout-v5 (slow on CPU)
    python benchmarks/bench_ppo.py --envs popgym         # POPGym RepeatPrevious (popgym-repeat-previous)
    python benchmarks/bench_ppo.py --rollouts 8 --threads 1
    python benchmarks/bench_ppo.py --envs popgym --agents lstm_ppo stock_lstm --set ppo.chunk_length=32
    python benchmarks/bench_ppo.py --envs popgym --agents lstm_ppo gru_ppo --interleave --gru-reference

Every agent trains with the same preset (n_envs, n_steps, epochs, batch, features extractor, hidden
size, critic layout); only the policy class differs:
    rims_ppo      our policy, RIMs core (sequence fast path)
    lstm_ppo      our policy, nn.LSTM core (sequence fast path)
    gru_ppo       our policy, nn.GRU core (sequence fast path)
    tlb_ppo       our policy, Temporal Latent Bottleneck core
    tlb_ref       tlb_ppo with the TLB's reference path (``fast_path = False``: the code before issue 43)
    assembly_ppo  our policy, stable-assembly core
    stock_lstm    sb3-contrib's own MlpLstmPolicy/CnnLstmPolicy/MultiInputLstmPolicy, unchanged
Each measurement runs in its own subprocess (so peak memory is that run's own), one after another.
Steps/s counts environment steps including the PPO updates, after one warm-up rollout. Each row prints
its ratio to stock_lstm and to lstm_ppo measured in the same invocation (one after another, not
interleaved, so load changes between rows show in the ratios).

Columns besides steps/s: ``update %`` the share of the time in PPO updates (the rest is rollouts),
``core fwd r/u %`` the share in the cores' forward calls during rollouts / during updates (forward hooks
on the cores), ``bwd %`` the share in ``backward`` (the whole model's, cores included), ``calls/upd``
the actor core's calls per update (one rollout's epochs and minibatches).

``--interleave`` runs all agents in one process instead, a rollout + update of each in turn, and prints
wall and CPU (``process_time``) steps/s with their ratios to lstm_ppo: on a core shared with other jobs
these ratios hold where the sequential rows' do not. ``--gru-reference`` adds gru_ppo with ``nn.GRU``
instead of the GRU core's C++ loop.

Envs (``--envs``, each with its own family preset): ``minigrid`` MiniGrid-DoorKey-5x5-v0, ``atari``
ALE/Breakout-v5, ``popgym`` the ``popgym-repeat-previous`` suite's training env (POPGym RepeatPrevious,
1 deck, k=4; MLP policies, 8 envs x 128 steps, 10 epochs of batch 128). ``--set`` overrides apply to
every agent of the run (``ppo.chunk_length=32`` trains on random 32-step chunks, where episodes start
inside sequences).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The checkout this script is in, not an installed rims_rl (a script's sys.path starts at its folder).
sys.path.insert(0, str(ROOT))
AGENTS = ("rims_ppo", "lstm_ppo", "gru_ppo", "tlb_ppo", "tlb_ref", "assembly_ppo", "stock_lstm")
#: env family -> (env id, suite): exactly one of them, as ``resolve_config`` takes them.
ENVS: dict[str, tuple[str | None, str | None]] = {
    "minigrid": ("MiniGrid-DoorKey-5x5-v0", None),
    "atari": ("ALE/Breakout-v5", None),
    "popgym": (None, "popgym-repeat-previous"),
}


def build(
    agent: str,
    env_id: str | None,
    seed: int = 0,
    overrides: list[str] | None = None,
    suite: str | None = None,
) -> Any:
    """The model for one benchmark row; stock_lstm is lstm_ppo's config on sb3-contrib's own policy."""
    from gymnasium import spaces
    from stable_baselines3.common.preprocessing import is_image_space

    from rims_rl.agents import build_model, sb3_policy_name
    from rims_rl.app.config import resolve_config
    from rims_rl.app.runs import make_train_env

    name = {"stock_lstm": "lstm_ppo", "tlb_ref": "tlb_ppo"}.get(agent, agent)
    if agent == "tlb_ref":
        from rims_rl.cores.tlb import TemporalLatentBottleneck

        TemporalLatentBottleneck.fast_path = False  # this worker process only
    config = resolve_config(name, env_id, suite=suite, seed=seed, overrides=overrides or None)
    env = make_train_env(config, seed)  # in-process for MiniGrid, subprocesses for Atari
    preset, policy = config.model, None
    if agent == "stock_lstm":
        space = env.observation_space
        image = isinstance(space, spaces.Dict) or is_image_space(space, normalized_image=True)
        policy = sb3_policy_name(space, recurrent=True) if image else "MlpLstmPolicy"
        # sb3-contrib's policy always detaches the shared core from the value loss (POPGym's presets
        # train it through the core: critic_grad_through_core, which the stock policy does not take).
        kwargs = {k: v for k, v in preset.policy_kwargs.items() if k != "critic_grad_through_core"}
        preset = preset.replace(policy_kwargs=kwargs)
    return build_model(preset, env, seed=seed, device="cpu", policy=policy)


class _Timed:
    """Wraps ``model.train`` (the PPO update) to add up its seconds, and times the cores' forward calls
    (rollout and update apart), counts the actor core's calls in updates and times ``backward``."""

    def __init__(self, model: Any) -> None:
        import torch

        self.seconds, self.calls, self._train = 0.0, 0, model.train
        self.core_rollout = self.core_update = self.backward = 0.0
        self._updating, self._entered = False, 0.0
        model.policy.lstm_actor.register_forward_pre_hook(self._count)
        for core in (model.policy.lstm_actor, getattr(model.policy, "lstm_critic", None)):
            if core is not None:
                core.register_forward_pre_hook(self._enter)
                core.register_forward_hook(self._leave)
        model.train = self
        backward = torch.Tensor.backward

        def timed_backward(tensor: Any, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            backward(tensor, *args, **kwargs)
            self.backward += time.perf_counter() - start

        torch.Tensor.backward = timed_backward  # type: ignore[method-assign]

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self.core_rollout = self.core_update = self.backward = 0.0

    def _count(self, *_: Any) -> None:
        self.calls += self._updating

    def _enter(self, *_: Any) -> None:
        self._entered = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        elapsed = time.perf_counter() - self._entered
        if self._updating:
            self.core_update += elapsed
        else:
            self.core_rollout += elapsed

    def __call__(self) -> None:
        self._updating = True
        start = time.perf_counter()
        self._train()
        self.seconds += time.perf_counter() - start
        self._updating = False


def worker(
    agent: str, family: str, rollouts: int, threads: int | None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Train one model for ``rollouts`` rollouts after a warm-up one; return steps/s, the share of the
    time spent in PPO updates, the actor core's calls per update and peak memory."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    env_id, suite = ENVS[family]
    model = build(agent, env_id, overrides=overrides, suite=suite)
    per_rollout = model.n_steps * model.n_envs
    model.learn(per_rollout)  # warm-up: allocations, first-call overheads
    timed = _Timed(model)
    start = time.perf_counter()
    model.learn(per_rollout * rollouts, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    return {
        "agent": agent,
        "env": env_id or suite,
        "policy": type(model.policy).__name__,
        "steps": per_rollout * rollouts,
        "seconds": seconds,
        "steps_per_s": per_rollout * rollouts / seconds,
        "update_share": timed.seconds / seconds,
        "core_fwd_rollout_share": timed.core_rollout / seconds,
        "core_fwd_update_share": timed.core_update / seconds,
        "backward_share": timed.backward / seconds,
        "core_calls_per_update": timed.calls / rollouts,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def ab_worker(
    agent: str, family: str, rollouts: int, threads: int | None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """One model, rollouts alternating between sb3-contrib's per-step loop (the path before
    ``rims_rl.policies._run_segments``) and the segment path, so machine load hits both alike; median
    steps/s and update seconds of each. Only torch LSTM/GRU cores have a segment path. A model with TLB
    cores alternates their reference path (``fast_path = False``) and their fast paths instead."""
    import statistics

    import torch

    import rims_rl.policies as policies
    from rims_rl.cores.tlb import TemporalLatentBottleneck

    if threads:
        torch.set_num_threads(threads)
    env_id, suite = ENVS[family]
    model = build(agent, env_id, overrides=overrides, suite=suite)
    per_rollout = model.n_steps * model.n_envs
    takes_packed = policies._takes_packed
    tlb_cores = [m for m in model.policy.modules() if isinstance(m, TemporalLatentBottleneck)]

    def variant(name: str) -> None:
        """loop / segments: sb3-contrib's per-step loop or the segment path (torch LSTM/GRU cores);
        reference / fast: the TLB core's reference path (the code before issue 43) or its fast paths."""
        policies._takes_packed = (lambda core: False) if name == "loop" else takes_packed  # type: ignore[assignment]
        for core in tlb_cores:
            core.fast_path = name != "reference"

    variants = ("reference", "fast") if tlb_cores else ("loop", "segments")
    model.learn(per_rollout)  # warm-up
    timed = _Timed(model)
    results: dict[str, dict[str, list[float]]] = {
        v: {"total": [], "update": [], "calls": []} for v in variants
    }
    for _ in range(rollouts):
        for name in variants:
            variant(name)
            timed.reset()
            start = time.perf_counter()
            model.learn(per_rollout, reset_num_timesteps=False)
            results[name]["total"].append(time.perf_counter() - start)
            results[name]["update"].append(timed.seconds)
            results[name]["calls"].append(timed.calls)
    policies._takes_packed = takes_packed
    row: dict[str, Any] = {"agent": agent, "env": env_id or suite, "rollouts": rollouts}
    for name, r in results.items():
        row[name] = {
            "steps_per_s": per_rollout / statistics.median(r["total"]),
            "update_s": statistics.median(r["update"]),
            "rollout_s": statistics.median(t - u for t, u in zip(r["total"], r["update"], strict=True)),
            "core_calls_per_update": statistics.median(r["calls"]),
        }
    return row


def interleave_worker(
    agents: list[str],
    family: str,
    rollouts: int,
    threads: int | None,
    overrides: list[str] | None = None,
    gru_reference: bool = False,
) -> dict[str, Any]:
    """All ``agents`` in one process, one rollout + update of each in turn, so machine load hits them
    alike; median wall and CPU (``process_time``: the time this process ran, robust to other processes
    sharing the core) seconds per rollout + update. ``gru_reference`` adds ``gru_ppo[nn.GRU]``: gru_ppo's
    model with its cores' C++ loop off (``GRUCore.fused_loop = False``), i.e. ``nn.GRU`` as before."""
    import statistics

    import torch

    from rims_rl.cores.gru import GRUCore

    if threads:
        torch.set_num_threads(threads)
    env_id, suite = ENVS[family]
    models: dict[str, Any] = {
        agent: build(agent, env_id, overrides=overrides, suite=suite) for agent in agents
    }
    if gru_reference:
        model = build("gru_ppo", env_id, overrides=overrides, suite=suite)
        for module in model.policy.modules():
            if isinstance(module, GRUCore):
                module.fused_loop = False
        models["gru_ppo[nn.GRU]"] = model
    per_rollout = {name: m.n_steps * m.n_envs for name, m in models.items()}
    for name, model in models.items():
        model.learn(per_rollout[name])  # warm-up (and the C++ loops' build)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in models}
    for _ in range(rollouts):
        for name, model in models.items():
            wall, cpu = time.perf_counter(), time.process_time()
            model.learn(per_rollout[name], reset_num_timesteps=False)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return {
        name: {
            "env": env_id or suite,
            "steps_per_s": per_rollout[name] / statistics.median(t["wall"]),
            "cpu_steps_per_s": per_rollout[name] / statistics.median(t["cpu"]),
        }
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--atari", action="store_true", help="also benchmark ALE/Breakout-v5")
    parser.add_argument(
        "--envs", nargs="+", default=["minigrid"], choices=list(ENVS), help="env families (default: minigrid)"
    )
    parser.add_argument("--rollouts", type=int, default=4, help="timed rollouts (+1 warm-up) per agent")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override for every agent, e.g. ppo.chunk_length=32 (repeatable)",
    )
    parser.add_argument(
        "--ab-loop",
        action="store_true",
        help="per agent, one model alternating sb3-contrib's per-step loop and the segment path "
        "(torch LSTM/GRU cores, episode starts inside sequences: use with ppo.chunk_length), or, for "
        "tlb_ppo, the TLB's reference path and its fast paths",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="all agents in one process, rollouts in turn (ratios under load); wall and CPU steps/s",
    )
    parser.add_argument(
        "--gru-reference",
        action="store_true",
        help="with --interleave: also gru_ppo with nn.GRU instead of the C++ GRU loop",
    )
    parser.add_argument("--worker", nargs=2, metavar=("AGENT", "FAMILY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interleave:
        _print_interleaved(args)
        return
    if args.worker:
        run = ab_worker if args.ab_loop else worker
        print(json.dumps(run(args.worker[0], args.worker[1], args.rollouts, args.threads, args.set)))
        return

    import platform

    import torch

    print(
        f"torch {torch.__version__}, {platform.machine()}, threads {args.threads or torch.get_num_threads()}"
        + (f", overrides {' '.join(args.set)}" if args.set else "")
    )
    if args.ab_loop:
        print(
            f"{'env':26} {'agent':13} {'path':9} {'steps/s':>8} {'update s':>8} {'rollout s':>9} "
            f"{'calls/upd':>9} {'speed-up':>8}"
        )
    else:
        print(
            f"{'env':26} {'agent':13} {'policy':22} {'steps/s':>8} {'vs stock':>8} {'vs lstm':>8} "
            f"{'update %':>8} {'core fwd r/u %':>14} {'bwd %':>5} {'calls/upd':>9} {'peak MB':>8}"
        )
    families = list(dict.fromkeys(args.envs + (["atari"] if args.atari else [])))
    for family in families:
        rows = {}
        for agent in args.agents:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                agent,
                family,
                "--rollouts",
                str(args.rollouts),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.ab_loop:
                cmd += ["--ab-loop"]
            for item in args.set:
                cmd += ["--set", item]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.exit(f"{agent} on {family} failed:\n{proc.stderr[-3000:]}")
            rows[agent] = json.loads(proc.stdout.strip().splitlines()[-1])
        if args.ab_loop:
            for agent, r in rows.items():
                paths = ("reference", "fast") if "fast" in r else ("loop", "segments")
                loop_sps = r[paths[0]]["steps_per_s"]
                for path in paths:
                    v = r[path]
                    print(
                        f"{r['env']:26} {agent:13} {path:9} {v['steps_per_s']:8.0f} {v['update_s']:8.2f} "
                        f"{v['rollout_s']:9.2f} {v['core_calls_per_update']:9.0f} "
                        f"{v['steps_per_s'] / loop_sps:8.2f}",
                        flush=True,
                    )
            continue
        stock = rows.get("stock_lstm", {}).get("steps_per_s")
        lstm = rows.get("lstm_ppo", {}).get("steps_per_s")
        for agent, r in rows.items():
            vs_stock = f"{r['steps_per_s'] / stock:8.2f}" if stock else f"{'-':>8}"
            vs_lstm = f"{r['steps_per_s'] / lstm:8.2f}" if lstm else f"{'-':>8}"
            print(
                f"{r['env']:26} {agent:13} {r['policy']:22} {r['steps_per_s']:8.0f} {vs_stock} {vs_lstm} "
                f"{100 * r['update_share']:8.0f} "
                f"{100 * r['core_fwd_rollout_share']:7.0f}/{100 * r['core_fwd_update_share']:<6.0f} "
                f"{100 * r['backward_share']:5.0f} {r['core_calls_per_update']:9.0f} {r['peak_rss_mb']:8.0f}",
                flush=True,
            )


def _print_interleaved(args: argparse.Namespace) -> None:
    """``--interleave``: one process per env family, a row per agent with its ratio to lstm_ppo."""
    import platform

    import torch

    threads = args.threads or torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {platform.machine()}, threads {threads}, interleaved in one process"
        + (f", overrides {' '.join(args.set)}" if args.set else "")
    )
    print(f"{'env':26} {'agent':16} {'steps/s':>8} {'vs lstm':>8} {'CPU steps/s':>11} {'vs lstm':>8}")
    for family in dict.fromkeys(args.envs + (["atari"] if args.atari else [])):
        rows = interleave_worker(
            args.agents, family, args.rollouts, args.threads, args.set, args.gru_reference
        )
        lstm = rows.get("lstm_ppo")
        for name, r in rows.items():
            vs = f"{r['steps_per_s'] / lstm['steps_per_s']:8.2f}" if lstm else f"{'-':>8}"
            vs_cpu = f"{r['cpu_steps_per_s'] / lstm['cpu_steps_per_s']:8.2f}" if lstm else f"{'-':>8}"
            print(
                f"{r['env']:26} {name:16} {r['steps_per_s']:8.0f} {vs} {r['cpu_steps_per_s']:11.0f} {vs_cpu}",
                flush=True,
            )


if __name__ == "__main__":
    main()
