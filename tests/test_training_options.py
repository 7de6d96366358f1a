"""Training options that remove handicaps of the stock RecurrentPPO setup (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from test_policies import ACT, OBS, SMALL_RIMS, lr, random_states

from rims_rl.policies import MlpRimsPolicy, RimsActorCriticPolicy


class LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters, to see whether a loss reaches it."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 6) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = th.nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return th.tanh(self.linear(obs.flatten(1)))


# ---------------------------------------------------------------- critic gradient through the shared core


def shared_policy(core: str, through: bool) -> RimsActorCriticPolicy:
    core_kwargs = {"rims_kwargs": dict(SMALL_RIMS)} if core == "rims" else {"lstm_hidden_size": 16}
    return MlpRimsPolicy(
        OBS,
        ACT,
        lr,
        core=core,
        shared_lstm=True,
        enable_critic_lstm=False,
        critic_grad_through_core=through,
        features_extractor_class=LinearExtractor,
        **core_kwargs,
    )


def value_loss_grads(policy: RimsActorCriticPolicy, method: str) -> dict[str, th.Tensor]:
    """Gradients of a value-only loss, through ``evaluate_actions``, ``forward`` or ``predict_values``."""
    gen = th.Generator().manual_seed(0)
    n_seq, T = 3, 4
    obs = th.rand(n_seq * T, 5, generator=gen) * 2 - 1
    starts = th.zeros(n_seq * T)
    starts[::T] = 1.0
    states = random_states(policy, n_seq, gen)
    if method == "evaluate_actions":
        values = policy.evaluate_actions(obs, th.zeros(n_seq * T), states, starts)[0]
    elif method == "forward":
        values = policy(obs, states, starts)[1]
    else:
        values = policy.predict_values(obs, states.vf, starts)
    (values**2).mean().backward()
    return {n: th.zeros_like(p) if p.grad is None else p.grad for n, p in policy.named_parameters()}


@pytest.mark.parametrize("method", ["evaluate_actions", "forward", "predict_values"])
@pytest.mark.parametrize("core", ["rims", "lstm"])
def test_value_loss_reaches_the_shared_core_only_when_asked(core: str, method: str) -> None:
    for through in (False, True):
        grads = value_loss_grads(shared_policy(core, through), method)
        shared = {n: g for n, g in grads.items() if n.startswith(("lstm_actor.", "features_extractor."))}
        assert {n.split(".")[0] for n in shared} == {"lstm_actor", "features_extractor"}
        norms = {n: float(g.abs().sum()) for n, g in shared.items()}
        if through:
            core_norm = sum(v for n, v in norms.items() if n.startswith("lstm_actor."))
            extractor_norm = sum(v for n, v in norms.items() if n.startswith("features_"))
            assert core_norm > 0 and extractor_norm > 0, norms
        else:
            assert all(v == 0.0 for v in norms.values()), norms
        assert float(grads["value_net.weight"].abs().sum()) > 0


def test_critic_grad_option_round_trips_and_needs_shared_core(tmp_path) -> None:
    policy = shared_policy("rims", True)
    assert policy._get_constructor_parameters()["critic_grad_through_core"] is True
    policy.save(tmp_path / "p.pt")
    assert MlpRimsPolicy.load(tmp_path / "p.pt").critic_grad_through_core is True
    with pytest.raises(ValueError, match="needs shared_lstm=True"):
        MlpRimsPolicy(OBS, ACT, lr, rims_kwargs=dict(SMALL_RIMS), critic_grad_through_core=True)
