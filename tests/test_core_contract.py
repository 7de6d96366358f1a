"""The core contract (rims_rl/cores/base.py), checked for every registered core.

The list comes from the registry, so a core gets these tests by registering: the built-ins through
rims-rl's own entry points, and the example outside package (examples/leaky_core) through a dist-info put
on the path by conftest.py, as an installed plug-in would be.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from plugin_core import NAME as PLUGIN
from rollout_check import assert_training_reproduces_rollouts
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.copying import make_core
from rims_rl.cores import ENTRY_POINT_GROUP, RecurrentCore, core_names, get_core
from rims_rl.cores.rims import RIMs
from rims_rl.envs.memory import CueMemoryEnv
from rims_rl.policies import MlpRimsPolicy, RimsActorCriticPolicy

BUILT_IN = ("rims", "lstm", "gru", "tlb", "assembly")
CORES = core_names()
IN, WIDTH = 5, 12


def lr(_: float) -> float:
    return 1e-3


def build(name: str, width: int = WIDTH, dtype: th.dtype = th.float32, **kwargs) -> RecurrentCore:
    th.manual_seed(0)
    return make_core(name, IN, width, **kwargs).to(dtype).eval()


def run_sequence(core: RecurrentCore, x: th.Tensor, state: tuple, starts: th.Tensor) -> tuple:
    """One call over the sequence, as the policy makes it (starts anywhere; T-major)."""
    T, B = starts.shape
    policy_call = RimsActorCriticPolicy._process_sequence
    feats = x.transpose(0, 1).reshape(B * T, -1)
    out, new_state = policy_call(feats, state, starts.transpose(0, 1).reshape(-1), core)
    return out.reshape(B, T, -1).transpose(0, 1), new_state


def run_steps(core: RecurrentCore, x: th.Tensor, state: tuple, starts: th.Tensor) -> tuple:
    """One step at a time, zeroing the state where an episode starts (the rollout's way)."""
    outs = []
    for t in range(x.shape[0]):
        keep = (1.0 - starts[t]).to(x.dtype).view(1, -1, 1)
        out, state = core(x[t : t + 1], (state[0] * keep, state[1] * keep))
        outs.append(out)
    return th.cat(outs), state


def random_state(core: RecurrentCore, B: int, dtype: th.dtype = th.float32) -> tuple:
    zero = core.initial_state(B)
    gen = th.Generator().manual_seed(1)
    # A state the core produced itself (some cores pack structure into theirs, e.g. a chunk position).
    x = th.randn(5, B, IN, generator=gen, dtype=dtype)
    with th.no_grad():
        _, state = core(x, zero)
    return state


def test_every_built_in_core_and_the_plugin_are_registered_through_entry_points() -> None:
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert set(BUILT_IN) | {PLUGIN} <= names
    assert set(BUILT_IN) | {PLUGIN} <= set(CORES)


@pytest.mark.parametrize("name", CORES)
def test_declared_state_size_is_what_the_core_carries(name: str) -> None:
    core = build(name)
    out, (h, c) = core(th.randn(4, 3, IN))
    assert out.shape == (4, 3, WIDTH) and core.output_size == WIDTH
    assert h.shape == c.shape == (core.num_layers, 3, core.state_size)
    assert core.hidden_size == core.state_size  # nn.LSTM's name: sb3-contrib sizes its buffers from it
    assert tuple(core.initial_state(3)[0].shape) == (core.num_layers, 3, core.state_size)


@pytest.mark.parametrize("name", CORES)
def test_step_by_step_equals_one_sequence_call_across_episode_starts(name: str) -> None:
    core = build(name)
    T, B = 11, 3
    x = th.randn(T, B, IN, generator=th.Generator().manual_seed(2))
    starts = th.zeros(T, B)
    starts[0, 0] = starts[4, 1] = starts[7, 2] = starts[8, 0] = 1.0
    state = random_state(core, B)
    with th.no_grad():
        out_seq, (h_seq, c_seq) = run_sequence(core, x, state, starts)
        out_steps, (h_steps, c_steps) = run_steps(core, x, state, starts)
    th.testing.assert_close(out_seq, out_steps, rtol=1e-4, atol=1e-5)
    th.testing.assert_close(h_seq, h_steps, rtol=1e-4, atol=1e-5)
    th.testing.assert_close(c_seq, c_steps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CORES)
def test_an_episode_start_zeroes_the_state(name: str) -> None:
    core = build(name)
    x = th.randn(6, 3, IN, generator=th.Generator().manual_seed(3))
    starts = th.zeros(6, 3)
    starts[0] = 1.0
    with th.no_grad():
        from_state, _ = run_sequence(core, x, random_state(core, 3), starts)
        fresh, _ = core(x)
        zero, _ = core(x, core.initial_state(3))
    th.testing.assert_close(from_state, fresh, rtol=1e-5, atol=1e-6)
    th.testing.assert_close(zero, fresh, rtol=0, atol=0)


@pytest.mark.parametrize("name", CORES)
def test_gradcheck_float64(name: str) -> None:
    core = build(name, width=6, dtype=th.float64)
    gen = th.Generator().manual_seed(4)
    x = th.randn(4, 2, IN, dtype=th.float64, generator=gen, requires_grad=True)
    h0, c0 = (s.detach().requires_grad_() for s in random_state(core, 2, th.float64))

    def f(x: th.Tensor, h: th.Tensor, c: th.Tensor) -> tuple:
        out, (h_t, c_t) = core(x, (h, c))
        return out, h_t, c_t

    assert th.autograd.gradcheck(f, (x, h0, c0), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("name", CORES)
@pytest.mark.parametrize("width", [4, 7])
def test_any_width_works(name: str, width: int) -> None:
    """sb3-contrib takes any lstm_hidden_size: a core needing a divisor picks a valid default itself."""
    policy = MlpRimsPolicy(
        spaces.Box(-1, 1, (IN,)), spaces.Discrete(3), lr, core=name, lstm_hidden_size=width
    )
    assert policy.lstm_output_dim == width
    assert policy.lstm_hidden_state_shape == (1, 1, policy.lstm_actor.state_size)


@pytest.mark.parametrize("name", CORES)
def test_rollout_is_reproduced_by_evaluate_actions(name: str) -> None:
    """PPO's ratio is 1 on unchanged weights only if training recomputes what the rollout computed."""
    env = make_vec_env(lambda: CueMemoryEnv(5), n_envs=4, seed=0)
    kwargs = {"core": name, "lstm_hidden_size": WIDTH, "n_lstm_layers": 2}
    model = RecurrentPPO(MlpRimsPolicy, env, n_steps=20, batch_size=40, seed=0, policy_kwargs=kwargs)
    assert assert_training_reproduces_rollouts(model, rollouts=1, batch_size=40) == 80


@pytest.mark.parametrize("name", CORES)
def test_save_load_and_predict_with_state_inside_recurrent_ppo(tmp_path, name: str, cue_env: VecEnv) -> None:
    kwargs = {"core": name, "lstm_hidden_size": WIDTH, "shared_lstm": True, "enable_critic_lstm": False}
    model = RecurrentPPO(
        MlpRimsPolicy, cue_env, n_steps=8, batch_size=16, n_epochs=1, seed=0, policy_kwargs=kwargs
    )
    model.learn(16)
    model.save(tmp_path / "model")
    loaded = RecurrentPPO.load(tmp_path / "model", env=cue_env)
    assert loaded.policy.core == name
    assert type(loaded.policy.lstm_actor) is type(model.policy.lstm_actor)
    for a, b in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        th.testing.assert_close(a, b, rtol=0, atol=0)
    obs = np.random.default_rng(0).uniform(0, 1, (2, *cue_env.observation_space.shape)).astype(np.float32)
    s1 = s2 = None
    starts = np.ones(2, bool)
    for _ in range(4):
        a1, s1 = model.predict(obs, state=s1, episode_start=starts, deterministic=True)
        a2, s2 = loaded.predict(obs, state=s2, episode_start=starts, deterministic=True)
        starts = np.zeros(2, bool)
        assert np.array_equal(a1, a2)
        assert s1[0].shape == (1, 2, model.policy.lstm_actor.state_size)
        np.testing.assert_allclose(s1[0], s2[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CORES)
def test_bad_arguments_give_one_line_errors(name: str) -> None:
    cls = get_core(name)
    for bad in (0, -3):
        with pytest.raises(ValueError) as err:
            cls(IN, bad)
        assert "\n" not in str(err.value) and "hidden_size" in str(err.value)
    core = build(name)
    with pytest.raises((ValueError, RuntimeError)) as err:  # RuntimeError: nn.LSTM's own, for "lstm"
        core(th.randn(3, 2, IN + 1))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError) as err:
        MlpRimsPolicy(
            spaces.Box(-1, 1, (IN,)), spaces.Discrete(3), lr, core=name, core_kwargs={"no_such_setting": 1}
        )
    assert "\n" not in str(err.value) and "no_such_setting" in str(err.value)


def test_a_broken_plugin_costs_only_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points are imported by name, when asked (issue 39.3): a plug-in that fails to import is
    listed with its one-line error, the built-ins keep working, and a name that is no identifier (it
    would become a path and terminal text) is not offered at all."""
    from rims_rl.app import catalog
    from rims_rl.cores import registry

    info = tmp_path / "broken_core-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-core\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[rims_rl.cores]\nbroken = no_such_module_here:Core\n../evil\x1b[2J = no_such_module_here:Core\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._scan()
    try:
        assert "broken" in core_names() and not any("evil" in n for n in core_names())
        listed = catalog.cores()
        assert (
            listed["broken"].startswith("BROKEN: cannot load core 'broken'") and "\n" not in listed["broken"]
        )
        assert listed["lstm"].startswith("rims_rl.cores.lstm.LSTMCore(")
        with pytest.raises(registry.CoreLoadError, match="no_such_module_here"):
            registry.get_core("broken")
        assert registry.get_core("rims") is RIMs
    finally:
        monkeypatch.undo()
        registry._scan()
    assert "broken" not in core_names()
