"""RIMs (and LSTM/GRU baseline) policies for sb3-contrib's ``RecurrentPPO``, used unchanged.

``RecurrentPPO(MlpRimsPolicy, env, policy_kwargs={"rims_kwargs": {"n_units": 6, "k": 4, "unit_size": 32}})``

The recurrent core is chosen with ``core``: ``"rims"`` (default), ``"lstm"``, ``"gru"``, or one of the other
modular cores, ``"tlb"`` (:class:`rims_rl.tlb.TemporalLatentBottleneck`) and ``"assembly"``
(:class:`rims_rl.assembly.StableAssembly`), configured with ``core_kwargs``. With ``"lstm"``
the policy is the same model as sb3-contrib's ``MlpLstmPolicy`` (same parameters, same names, same
per-step semantics), so RIMs and LSTM agents differ only in the core. The critic follows sb3-contrib:
its own core (``enable_critic_lstm=True``), the actor's core shared (``shared_lstm=True``, no critic
gradient through it unless ``critic_grad_through_core=True``) or none (both False: a linear layer).

Cores are built inside ``__init__`` before the optimizer is created, so the optimizer owns their
parameters (replacing ``policy.lstm_actor`` afterwards would leave the optimizer on the old module).

Training minibatches from sb3-contrib's recurrent buffer are padded sequences that can only start an
episode at their first step, so the whole batch of sequences goes through the core in one call
instead of sb3-contrib's per-step Python loop (RIMs takes ``episode_starts`` itself; LSTM/GRU cores
zero the initial state where the first step starts an episode and fall back to the loop otherwise).
"""

from __future__ import annotations

import difflib
import inspect
from contextlib import ExitStack
from typing import Any, cast

import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from rims_rl.assembly import StableAssembly
from rims_rl.core import RIMs
from rims_rl.dropout import KeyedDropout, new_keys
from rims_rl.tlb import TemporalLatentBottleneck

#: Modular cores other than RIMs, configured through the generic ``core_kwargs`` (their constructor's
#: arguments except the sizes, which come from the policy).
MODULAR_CORES: dict[str, type[nn.Module]] = {"tlb": TemporalLatentBottleneck, "assembly": StableAssembly}
CORES: tuple[str, ...] = ("rims", "lstm", "gru", *MODULAR_CORES)
#: Cores that take ``episode_starts`` themselves (resets anywhere in a sequence, one call).
_STARTS_AWARE: tuple[type[nn.Module], ...] = (RIMs, *MODULAR_CORES.values())
#: Keys accepted in ``rims_kwargs``: the ``RIMs`` constructor's arguments (its sizes come from the policy)
#: plus ``unit_size``, which sets the hidden size to ``n_units * unit_size``.
RIMS_KWARGS: tuple[str, ...] = tuple(
    name
    for name in inspect.signature(RIMs.__init__).parameters
    if name not in ("self", "input_size", "hidden_size")
) + ("unit_size",)
#: Hidden size when none is given: sb3-contrib's LSTM default, and 6 units of 32 for RIMs.
DEFAULT_LSTM_HIDDEN = 256
DEFAULT_UNIT_SIZE = 32

State = tuple[th.Tensor, th.Tensor]


def _close(name: str, valid: tuple[str, ...]) -> str:
    """A 'did you mean' hint for an unknown key."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def resolve_core_config(
    core: str,
    lstm_hidden_size: int | None,
    rims_kwargs: dict[str, Any] | None,
    n_lstm_layers: int = 1,
    core_kwargs: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Check the core settings and return ``(hidden_size, kwargs for the core's constructor)``.

    ``rims_kwargs`` configure ``core="rims"``; ``core_kwargs`` configure the other modular cores
    (``MODULAR_CORES``). Hidden size when not given: 256 for LSTM/GRU/TLB, ``n_units * 32`` for RIMs and
    ``n_modules * 32`` for the assembly (it must divide into modules).

    Raises ``ValueError`` with the offending key and value, before any module is built, so bad
    ``policy_kwargs`` fail at construction with a readable message rather than deep in torch.
    """
    if core not in CORES:
        raise ValueError(f"core must be one of {CORES}, got {core!r}{_close(str(core), CORES)}")
    if lstm_hidden_size is not None and (
        not isinstance(lstm_hidden_size, int) or isinstance(lstm_hidden_size, bool) or lstm_hidden_size < 1
    ):
        raise ValueError(f"lstm_hidden_size must be a positive integer or None, got {lstm_hidden_size!r}")
    if not isinstance(n_lstm_layers, int) or n_lstm_layers < 1:
        raise ValueError(f"n_lstm_layers must be a positive integer, got {n_lstm_layers!r}")
    if core_kwargs and core not in MODULAR_CORES:
        raise ValueError(
            f"core_kwargs configure core in {tuple(MODULAR_CORES)}, got core={core!r}"
            + ("; use rims_kwargs for RIMs" if core == "rims" else "")
        )
    if core in MODULAR_CORES:
        return _resolve_modular(core, lstm_hidden_size, rims_kwargs, n_lstm_layers, core_kwargs)
    if core != "rims":
        if rims_kwargs:
            raise ValueError(f"rims_kwargs is only used with core='rims', got core={core!r}")
        if core == "gru" and n_lstm_layers != 1:
            raise ValueError("core='gru' supports n_lstm_layers=1 only")
        return (DEFAULT_LSTM_HIDDEN if lstm_hidden_size is None else lstm_hidden_size), {}

    if n_lstm_layers != 1:
        raise ValueError(f"core='rims' has one layer; n_lstm_layers must be 1, got {n_lstm_layers}")
    if not isinstance(rims_kwargs, dict | None):
        raise ValueError(f"rims_kwargs must be a dict, got {type(rims_kwargs).__name__}")
    kwargs = dict(rims_kwargs or {})
    for key in kwargs:
        if key not in RIMS_KWARGS:
            raise ValueError(
                f"unknown rims_kwargs key {key!r}{_close(key, RIMS_KWARGS)} (valid: {RIMS_KWARGS})"
            )
    n_units = kwargs.get("n_units", 6)
    if not isinstance(n_units, int) or isinstance(n_units, bool) or n_units < 1:
        raise ValueError(f"rims_kwargs['n_units'] must be a positive integer, got {n_units!r}")
    unit_size = kwargs.pop("unit_size", None)
    if unit_size is not None:
        if not isinstance(unit_size, int) or isinstance(unit_size, bool) or unit_size < 1:
            raise ValueError(f"rims_kwargs['unit_size'] must be a positive integer, got {unit_size!r}")
        hidden = n_units * unit_size
        if lstm_hidden_size is not None and lstm_hidden_size != hidden:
            raise ValueError(
                f"lstm_hidden_size={lstm_hidden_size} disagrees with rims_kwargs n_units={n_units} x "
                f"unit_size={unit_size} = {hidden}; give one of them"
            )
    elif lstm_hidden_size is not None:
        hidden = lstm_hidden_size
        if hidden % n_units != 0:
            raise ValueError(
                f"lstm_hidden_size={hidden} must be divisible by rims_kwargs n_units={n_units} "
                f"(e.g. {n_units * max(1, round(hidden / n_units))})"
            )
    else:
        hidden = n_units * DEFAULT_UNIT_SIZE
    return hidden, kwargs  # the values themselves are checked once, by the core's constructor


def _resolve_modular(
    core: str,
    lstm_hidden_size: int | None,
    rims_kwargs: dict[str, Any] | None,
    n_lstm_layers: int,
    core_kwargs: dict[str, Any] | None,
) -> tuple[int, dict[str, Any]]:
    """``resolve_core_config`` for ``MODULAR_CORES``: known keys, one layer, values checked by a build."""
    if rims_kwargs:
        raise ValueError(f"rims_kwargs is only used with core='rims'; give core={core!r} core_kwargs")
    if n_lstm_layers != 1:
        raise ValueError(f"core={core!r} has one layer; n_lstm_layers must be 1, got {n_lstm_layers}")
    if not isinstance(core_kwargs, dict | None):
        raise ValueError(f"core_kwargs must be a dict, got {type(core_kwargs).__name__}")
    cls = MODULAR_CORES[core]
    valid = tuple(
        n
        for n in inspect.signature(cls.__init__).parameters
        if n not in ("self", "input_size", "hidden_size")
    )
    kwargs = dict(core_kwargs or {})
    for key in kwargs:
        if key not in valid:
            raise ValueError(
                f"unknown core_kwargs key {key!r} for core={core!r}{_close(key, valid)} (valid: {valid})"
            )
    if lstm_hidden_size is not None:
        hidden = lstm_hidden_size
    elif core == "assembly":
        n_modules = kwargs.get("n_modules", inspect.signature(cls.__init__).parameters["n_modules"].default)
        hidden = n_modules * DEFAULT_UNIT_SIZE if isinstance(n_modules, int) else DEFAULT_LSTM_HIDDEN
    else:
        hidden = DEFAULT_LSTM_HIDDEN
    return hidden, kwargs  # the values themselves are checked once, by the core's constructor


class GRUCore(nn.Module):
    """``nn.GRU`` with ``nn.LSTM``'s ``(h, c)`` interface (``c`` kept zero) for sb3-contrib's buffers."""

    def __init__(self, input_size: int, hidden_size: int, **kwargs: Any) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, **kwargs)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = self.gru.num_layers

    def forward(self, x: th.Tensor, state: State | None = None) -> tuple[th.Tensor, State]:
        h0 = None if state is None else state[0]
        out, h = self.gru(x, h0)
        return out, (h, th.zeros_like(h))


class RimsActorCriticPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib's recurrent actor-critic policy with a RIMs (or LSTM/GRU) core.

    Takes every argument of ``RecurrentActorCriticPolicy`` plus:

    :param core: ``"rims"``, ``"lstm"``, ``"gru"``, ``"tlb"`` or ``"assembly"``.
    :param rims_kwargs: arguments of ``rims_rl.core.RIMs`` (n_units, k, cell, attention sizes,
        dropouts, comm_top_k, use_comm) plus ``unit_size``; see ``RIMS_KWARGS``.
    :param lstm_hidden_size: total hidden size; for RIMs ``n_units * unit_size`` (``None``: 256 for
        LSTM/GRU, ``n_units * 32`` for RIMs).
    :param core_kwargs: arguments of the ``"tlb"`` / ``"assembly"`` core's constructor (``MODULAR_CORES``).
    :param critic_grad_through_core: with ``shared_lstm=True``, let the value loss train the shared core
        and the features extractor (as torch-ac does); ``False`` keeps sb3-contrib's detach.
    :param keyed_dropout: RIMs attention dropout with masks drawn from per-step keys carried in the
        actor state and stored in the buffer (``rims_rl.dropout``), so the update recomputes the
        rollout's masks and PPO's ratio is 1 on unchanged weights. Needs ``ChunkedRecurrentPPO``.
    """

    # sb3-contrib's __init__ types its cores as the nn.LSTM it builds; here they are any module with
    # nn.LSTM's interface (``input_size``, the ``(h, c)`` call), built by ``_build_core``.
    lstm_actor: nn.Module  # type: ignore[assignment]
    lstm_critic: nn.Module | None  # type: ignore[assignment]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lstm_hidden_size: int | None = None,
        n_lstm_layers: int = 1,
        shared_lstm: bool = False,
        enable_critic_lstm: bool = True,
        lstm_kwargs: dict[str, Any] | None = None,
        core: str = "rims",
        rims_kwargs: dict[str, Any] | None = None,
        core_kwargs: dict[str, Any] | None = None,
        critic_grad_through_core: bool = False,
        keyed_dropout: bool = False,
    ) -> None:
        hidden, resolved_kwargs = resolve_core_config(
            core, lstm_hidden_size, rims_kwargs, n_lstm_layers, core_kwargs
        )
        if critic_grad_through_core and not shared_lstm:
            raise ValueError(
                "critic_grad_through_core=True needs shared_lstm=True (with its own core or a linear "
                "critic the value loss already trains everything the critic reads)"
            )
        if keyed_dropout and core != "rims":
            raise ValueError(f"keyed_dropout applies to core='rims' (attention dropout), got core={core!r}")
        if shared_lstm and enable_critic_lstm:
            raise ValueError("choose one of shared_lstm and enable_critic_lstm (or neither: a linear critic)")
        if shared_lstm and not share_features_extractor:
            raise ValueError("shared_lstm=True needs share_features_extractor=True")
        if lstm_kwargs and core not in ("lstm", "gru"):
            raise ValueError(
                f"lstm_kwargs apply to core='lstm'/'gru'; use rims_kwargs (rims) or core_kwargs "
                f"for core={core!r}"
            )
        self.lstm_output_dim = hidden
        # RecurrentActorCriticPolicy.__init__ hard-codes nn.LSTM and then rebuilds the optimizer; we run
        # its body here with our core factory, so no throwaway LSTM is built and the optimizer (created
        # last, below) owns the core. Module creation order matches sb3-contrib's, so with core="lstm"
        # the same seed gives the same initial weights as MlpLstmPolicy.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=use_sde,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            squash_output=squash_output,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )
        self.core = core
        self.rims_kwargs = dict(rims_kwargs or {})
        self.core_kwargs = dict(core_kwargs or {})
        self._core_kwargs = resolved_kwargs
        self.lstm_kwargs = dict(lstm_kwargs or {})
        self.n_lstm_layers = n_lstm_layers
        self.shared_lstm = shared_lstm
        self.enable_critic_lstm = enable_critic_lstm
        self.critic_grad_through_core = critic_grad_through_core
        self.keyed_dropout = keyed_dropout
        self.lstm_actor = self._build_core()
        self.lstm_hidden_state_shape = (n_lstm_layers, 1, hidden)
        self.critic = None
        self.lstm_critic = None
        if not (shared_lstm or enable_critic_lstm):
            self.critic = nn.Linear(self.features_dim, hidden)
        if enable_critic_lstm:
            self.lstm_critic = self._build_core()
        if keyed_dropout:
            self._install_keyed_dropout()
        # As in sb3: ``type[Optimizer]`` has no ``lr`` argument, every concrete optimizer class has one.
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _build_core(self) -> nn.Module:
        """Factory for the actor/critic cores; override to try other cores (called before the optimizer)."""
        if self.core == "rims":
            return RIMs(self.features_dim, self.lstm_output_dim, **self._core_kwargs)
        if self.core in MODULAR_CORES:
            return MODULAR_CORES[self.core](self.features_dim, self.lstm_output_dim, **self._core_kwargs)
        if self.core == "gru":
            return GRUCore(self.features_dim, self.lstm_output_dim, **self.lstm_kwargs)
        return nn.LSTM(
            self.features_dim, self.lstm_output_dim, num_layers=self.n_lstm_layers, **self.lstm_kwargs
        )

    def rims_cores(self) -> dict[str, RIMs]:
        """The policy's RIMs modules by role (``"actor"``, ``"critic"``), for logging unit statistics."""
        cores = {"actor": self.lstm_actor, "critic": self.lstm_critic}
        return {role: c for role, c in cores.items() if isinstance(c, RIMs)}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            share_features_extractor=self.share_features_extractor,
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.n_lstm_layers,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            lstm_kwargs=self.lstm_kwargs,
            core=self.core,
            rims_kwargs=self.rims_kwargs,
            core_kwargs=self.core_kwargs,
            critic_grad_through_core=self.critic_grad_through_core,
            keyed_dropout=self.keyed_dropout,
        )
        return data

    def _install_keyed_dropout(self) -> None:
        """Swap the RIMs cores' attention dropout for ``KeyedDropout`` (no parameters: optimizer unaffected).

        Relies on ``RIMs`` applying ``input_dropout`` to [n, B, ...] and ``comm_dropout`` to
        [n, n, B, H] attention probabilities, once per step each; ``KeyedDropout`` checks the count. Only
        the core's autograd loop calls these modules (its fused path draws its own masks), so keyed
        dropout switches the fused path off.
        """
        for i, core in enumerate(c for c in (self.lstm_actor, self.lstm_critic) if c is not None):
            assert isinstance(core, RIMs), "keyed_dropout needs core='rims' (checked in __init__)"
            core.fast_path = False
            core.input_dropout = KeyedDropout(core.input_dropout.p, batch_dim=1, salt=2 * i + 1)
            core.comm_dropout = KeyedDropout(core.comm_dropout.p, batch_dim=2, salt=2 * i + 2)

    @staticmethod
    def _keyed(core: nn.Module, keys: th.Tensor | None) -> ExitStack:
        """Context in which ``core``'s keyed dropout draws its masks from ``keys`` [T, B] (if any)."""
        stack = ExitStack()
        if keys is not None:
            for module in core.modules():
                if isinstance(module, KeyedDropout):
                    stack.enter_context(module.use_keys(keys))
        return stack

    def _shared_critic_latent(self, latent_pi: th.Tensor) -> th.Tensor:
        """The critic's input under ``shared_lstm``: detached as in sb3-contrib unless the value loss
        is meant to train the shared core and features extractor too (``critic_grad_through_core``)."""
        return latent_pi if self.critic_grad_through_core else latent_pi.detach()

    def _latents(
        self, obs: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, RNNStates]:
        """Actor and critic latents (after the mlp extractor) and the new states; sb3-contrib's
        ``forward``/``evaluate_actions`` body with the shared-core detach made optional."""
        features = self.extract_features(obs)  # one tensor if share_features_extractor, else (pi, vf)
        if isinstance(features, th.Tensor):
            pi_features = vf_features = features
        else:
            pi_features, vf_features = features
        # A third element of the actor state holds the dropout keys of these steps (rims_rl.dropout).
        keys = lstm_states.pi[2] if self.keyed_dropout and len(lstm_states.pi) > 2 else None
        with self._keyed(self.lstm_actor, keys):
            latent_pi, states_pi = self._process_sequence(
                pi_features, (lstm_states.pi[0], lstm_states.pi[1]), episode_starts, self.lstm_actor
            )
        if self.lstm_critic is not None:
            with self._keyed(self.lstm_critic, keys):
                latent_vf, states_vf = self._process_sequence(
                    vf_features, (lstm_states.vf[0], lstm_states.vf[1]), episode_starts, self.lstm_critic
                )
        elif self.shared_lstm:
            latent_vf = self._shared_critic_latent(latent_pi)
            states_vf = (states_pi[0].detach(), states_pi[1].detach())
        else:
            assert self.critic is not None  # the linear critic: neither shared_lstm nor enable_critic_lstm
            latent_vf = self.critic(vf_features)
            states_vf = states_pi
        latent_pi = self.mlp_extractor.forward_actor(latent_pi)
        latent_vf = self.mlp_extractor.forward_critic(latent_vf)
        return latent_pi, latent_vf, RNNStates(states_pi, states_vf)

    # forward, evaluate_actions, predict_values: sb3-contrib's recurrent signatures (states and
    # episode_starts), which override ActorCriticPolicy's incompatibly in sb3-contrib itself.
    def forward(  # type: ignore[override]
        self, obs: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor, deterministic: bool = False
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, RNNStates]:
        latent_pi, latent_vf, states = self._latents(obs, lstm_states, episode_starts)
        if self.keyed_dropout:  # the keys of the next step travel with the state to the buffer
            h = states.pi[0]
            states = RNNStates((*states.pi, new_keys(h.shape[1], h.device)), states.vf)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, self.value_net(latent_vf), log_prob, states

    def evaluate_actions(  # type: ignore[override]
        self, obs: th.Tensor, actions: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        if self.keyed_dropout and self.training and len(lstm_states.pi) < 3:
            raise RuntimeError(
                "keyed_dropout=True trains on the rollout's dropout keys, which this buffer did not "
                "return; train with rims_rl.ppo.ChunkedRecurrentPPO"
            )
        latent_pi, latent_vf, _ = self._latents(obs, lstm_states, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def predict_values(  # type: ignore[override]
        self, obs: th.Tensor, lstm_states: State, episode_starts: th.Tensor
    ) -> th.Tensor:
        lstm_states = lstm_states[:2]  # bootstrap values: no dropout keys
        if not self.shared_lstm:
            return super().predict_values(obs, lstm_states, episode_starts)
        features = BaseModel.extract_features(self, obs, self.vf_features_extractor)
        latent_pi, _ = self._process_sequence(features, lstm_states, episode_starts, self.lstm_actor)
        return self.value_net(self.mlp_extractor.forward_critic(self._shared_critic_latent(latent_pi)))

    # sb3-contrib declares ``tuple[Tensor, Tensor]`` but returns ``(output, (h, c))``, as this one does.
    @staticmethod
    def _process_sequence(  # type: ignore[override]
        features: th.Tensor, lstm_states: State, episode_starts: th.Tensor, lstm: nn.Module
    ) -> tuple[th.Tensor, State]:
        """Run the core over ``[n_seq * T]`` flattened sequences in one call where that is exact.

        Same contract as sb3-contrib's version (state zeroed before each step whose episode_start is
        1). RIMs and the other modular cores handle starts anywhere themselves. For LSTM/GRU, starts
        only on the first step (always the case for padded training sequences, and for T=1 rollout
        steps) mean: zero the initial state there, then one cuDNN/oneDNN call; otherwise the per-step
        loop.
        """
        n_seq = lstm_states[0].shape[1]
        # torch types an unknown Module attribute as Tensor | Module (its __getattr__); every core sets an
        # int input_size in __init__.
        input_size = cast(int, lstm.input_size)
        x = features.reshape((n_seq, -1, input_size)).swapaxes(0, 1)
        starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
        if isinstance(lstm, _STARTS_AWARE):
            out, lstm_states = lstm(x, lstm_states, episode_starts=starts)
        elif not th.any(starts[1:]):
            keep = (1.0 - starts[0]).view(1, n_seq, 1)
            out, lstm_states = lstm(x, (keep * lstm_states[0], keep * lstm_states[1]))
        else:
            # sb3-contrib's per-step loop: it annotates the core as nn.LSTM but uses only input_size and
            # the (h, c) call, which GRUCore provides; it returns (output, (h, c)), not the declared pair.
            per_step = RecurrentActorCriticPolicy._process_sequence
            out_states = per_step(features, lstm_states, episode_starts, lstm)  # type: ignore[arg-type]
            return cast(tuple[th.Tensor, State], out_states)
        return th.flatten(out.transpose(0, 1), start_dim=0, end_dim=1), lstm_states


class MlpRimsPolicy(RimsActorCriticPolicy):
    """RIMs policy on flat observations (``FlattenExtractor``)."""


class CnnRimsPolicy(RimsActorCriticPolicy):
    """RIMs policy on images (``NatureCNN`` by default, as sb3-contrib's ``CnnLstmPolicy``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(*args, **kwargs)


class MultiInputRimsPolicy(RimsActorCriticPolicy):
    """RIMs policy on Dict observations (``CombinedExtractor`` by default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", CombinedExtractor)
        super().__init__(*args, **kwargs)


POLICIES: dict[str, type[RimsActorCriticPolicy]] = {
    "MlpRimsPolicy": MlpRimsPolicy,
    "CnnRimsPolicy": CnnRimsPolicy,
    "MultiInputRimsPolicy": MultiInputRimsPolicy,
}

# RL Zoo and SB3 resolve policy names through the algorithm's aliases: importing rims_rl makes
# ``RecurrentPPO("MlpRimsPolicy", env)`` and ``policy: MlpRimsPolicy`` in a zoo file work (ChunkedRecurrentPPO
# shares RecurrentPPO's aliases).
RecurrentPPO.policy_aliases.update(POLICIES)
