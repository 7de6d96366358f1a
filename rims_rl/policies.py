"""Policies for sb3-contrib's ``RecurrentPPO`` (used unchanged) with any registered recurrent core.

``RecurrentPPO(MlpRimsPolicy, env, policy_kwargs={"core": "rims", "core_kwargs": {"n_units": 6, "k": 4}})``

The core is a name from ``rims_rl.cores.registry`` (``"rims"``, the default, ``"lstm"``, ``"gru"``,
``"tlb"``, ``"assembly"`` or an installed plug-in), configured with ``core_kwargs``. With ``"lstm"`` the
policy is the same model as sb3-contrib's ``MlpLstmPolicy`` (same parameters, same names, same per-step
semantics, same errors), so agents differ only in the core. The critic follows sb3-contrib: its own
core (``enable_critic_lstm=True``), the actor's core shared (``shared_lstm=True``, no critic gradient
through it unless ``critic_grad_through_core=True``) or none (both False: a linear layer).

Cores are built inside ``__init__`` before the optimizer is created, so the optimizer owns their
parameters (replacing ``policy.lstm_actor`` afterwards would leave the optimizer on the old module).

Training minibatches go through the core in one call instead of sb3-contrib's per-step Python loop.
Cores that declare ``takes_episode_starts`` reset themselves anywhere (the GRU core on CPU too: its C++
loop, ``rims_rl.cores.gru_ext``). For the others, sequences that
start an episode only at their first step (sb3-contrib's padded sequences) get their state zeroed
there; sequences with starts inside (``ChunkedRecurrentPPO``'s chunks) are cut into episode segments
that run in one or two calls where the core is a torch LSTM/GRU (``_run_segments``), with
sb3-contrib's loop as the fallback for other cores.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, NamedTuple, cast

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
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from rims_rl.checks import check_number, check_positive, hint, is_int, is_number
from rims_rl.cores.base import RecurrentCore, TorchRNNCore
from rims_rl.cores.registry import core_defaults, core_settings, get_core
from rims_rl.cores.stack import StackedCore
from rims_rl.dropout import KeyedDropout, new_keys

State = tuple[th.Tensor, th.Tensor]
#: nn.LSTM keywords at the values that mean "what sb3-contrib needs anyway": accepted by every core.
_LSTM_NOOPS: dict[str, Any] = {"bias": True, "batch_first": False, "bidirectional": False, "proj_size": 0}


class SettingError(AssertionError, ValueError):
    """A setting sb3-contrib refuses with an ``assert``: the same exception type, and still a ``ValueError``
    (our one-line message) for callers that catch bad settings."""


class WidthError(TypeError, ValueError):
    """A width of the wrong type, where ``nn.LSTM`` raises ``TypeError``; also a ``ValueError``."""


class CoreConfig(NamedTuple):
    """A policy's core settings, checked: what ``_build_core`` builds for the actor (and critic)."""

    cls: type[RecurrentCore]
    hidden_size: int  # output width, read by the heads
    kwargs: dict[str, Any]  # the constructor's, width defaults resolved (``resolve_kwargs``)
    n_layers: int
    layer_dropout: float  # between stacked layers, from lstm_kwargs["dropout"] (cores without native layers)


def _check_width(name: str, value: object) -> None:
    """nn.LSTM's checks of a width, with its exception types (TypeError for a non-integer)."""
    check_positive(name, value, type_error=WidthError)


def _check_setting_types(core: str, label: str, kwargs: dict[str, Any], defaults: dict[str, Any]) -> None:
    """A setting whose default is a bool, an int or a float must be one too, checked here once for every
    core (plug-ins included): ``use_comm=no`` would otherwise be a truthy string, and a float width a
    TypeError deep inside the constructor."""
    for key, value in kwargs.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = is_int(value), "an integer"
        elif isinstance(default, float):
            ok, kind = is_number(value), "a number"
        else:
            continue  # no default, or None: the core checks it (or takes anything)
        if not ok:
            raise ValueError(f"{label} {key} of core={core!r} must be {kind}, got {value!r}")


def resolve_core_config(
    core: str,
    lstm_hidden_size: int | None,
    rims_kwargs: dict[str, Any] | None,
    n_lstm_layers: int = 1,
    core_kwargs: dict[str, Any] | None = None,
    lstm_kwargs: dict[str, Any] | None = None,
) -> CoreConfig:
    """Check the core settings before any module is built, so bad ``policy_kwargs`` fail with the key.

    ``core`` is a registered name (``rims_rl.cores.registry``); ``core_kwargs`` are its constructor's
    arguments (``rims_kwargs``: the same for ``core="rims"``, the older spelling). The width when not
    given is the core's ``default_hidden_size``. ``lstm_kwargs`` go to cores with native layers as they
    are (``core="lstm"`` gets exactly what sb3-contrib passes ``nn.LSTM``); other cores map them through
    their ``lstm_kwargs`` declaration, take ``dropout`` between stacked layers, accept nn.LSTM's defaults
    of the rest and refuse anything else by name.
    """
    if not isinstance(core, str):
        raise ValueError(f"core must be a registered core name, got {core!r}")
    cls = get_core(core)
    if lstm_hidden_size is not None:
        _check_width("lstm_hidden_size", lstm_hidden_size)
    _check_width("n_lstm_layers", n_lstm_layers)
    for name, given in (
        ("rims_kwargs", rims_kwargs),
        ("core_kwargs", core_kwargs),
        ("lstm_kwargs", lstm_kwargs),
    ):
        if not isinstance(given, dict | None):
            raise ValueError(f"{name} must be a dict, got {type(given).__name__}")
    if rims_kwargs and core != "rims":
        raise ValueError(f"rims_kwargs is only used with core='rims', got core={core!r}; give core_kwargs")
    if rims_kwargs and core_kwargs:
        raise ValueError("give the RIMs settings once: rims_kwargs or core_kwargs, not both")
    kwargs = dict(rims_kwargs or core_kwargs or {})
    label = "rims_kwargs" if rims_kwargs else "core_kwargs"
    valid = core_settings(cls)
    for key in kwargs:
        if key not in valid:
            raise ValueError(
                f"unknown {label} key {key!r} for core={core!r}{hint(key, valid)} "
                f"(valid: {', '.join(valid) or 'none'})"
            )
    _check_setting_types(core, label, kwargs, core_defaults(cls))
    lstm_kw = dict(lstm_kwargs or {})
    dropout = 0.0
    if cls.native_layers:
        if not issubclass(cls, nn.LSTM):  # nn.LSTM itself takes them raw: sb3-contrib's error contract
            for key in lstm_kw:
                if key not in cls.lstm_kwargs:
                    raise ValueError(
                        f"lstm_kwargs key {key!r} has no equivalent in core={core!r} "
                        f"(it takes {', '.join(cls.lstm_kwargs)}); remove it"
                    )
        kwargs.update(lstm_kw)
    else:
        for key, value in lstm_kw.items():
            if key in cls.lstm_kwargs:
                target = cls.lstm_kwargs[key]
                if target in kwargs:
                    raise ValueError(
                        f"lstm_kwargs {key!r} and {label} {target!r} set the same thing; give one"
                    )
                kwargs[target] = value
            elif key == "dropout":
                dropout = check_number("lstm_kwargs dropout", value, 0.0, 1.0)
            elif key not in _LSTM_NOOPS or value != _LSTM_NOOPS[key]:
                raise ValueError(
                    f"lstm_kwargs {key}={value!r} has no equivalent in core={core!r}; remove it "
                    f"(it accepts dropout between stacked layers"
                    + (f" and {', '.join(cls.lstm_kwargs)}" if cls.lstm_kwargs else "")
                    + ")"
                )
    hidden = cls.default_hidden_size(kwargs) if lstm_hidden_size is None else lstm_hidden_size
    return CoreConfig(cls, hidden, cls.resolve_kwargs(hidden, kwargs), n_lstm_layers, dropout)


class _FeaturePrecision(BaseModel):
    """``BaseModel.extract_features`` under bfloat16 autocast when the policy sets ``bf16_features``, its
    features handed on in float32. Mixed in after ``ActorCriticPolicy`` in the MRO, so every path reaches
    it: SB3's ``extract_features`` and sb3-contrib's ``get_distribution``/``predict_values``, which call
    the extraction past ``ActorCriticPolicy`` (``super(ActorCriticPolicy, self)``)."""

    bf16_features = False

    def extract_features(self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor) -> th.Tensor:
        if not self.bf16_features:
            return super().extract_features(obs, features_extractor)
        with th.autocast(self.device.type, dtype=th.bfloat16):
            return super().extract_features(obs, features_extractor).float()


# ActorCriticPolicy's extract_features already differs from BaseModel's (SB3 ignores [override] there)
class RimsActorCriticPolicy(RecurrentActorCriticPolicy, _FeaturePrecision):  # type: ignore[misc]
    """sb3-contrib's recurrent actor-critic policy with any registered recurrent core.

    Takes every argument of ``RecurrentActorCriticPolicy`` (``lstm_hidden_size`` is the core's output
    width, ``n_lstm_layers`` stacks cores, ``lstm_kwargs`` map onto the core) plus:

    :param core: a registered core name (``rims_rl.cores.registry``: ``rims``, ``lstm``, ``gru``, ``tlb``,
        ``assembly`` and any installed plug-in).
    :param core_kwargs: the core's constructor arguments (its width defaults: ``resolve_kwargs``).
    :param rims_kwargs: ``core_kwargs`` of ``core="rims"``, the older spelling (presets and checkpoints
        use it); ``unit_size`` sets the width to ``n_units * unit_size``.
    :param critic_grad_through_core: with ``shared_lstm=True``, let the value loss train the shared core
        and the features extractor (as torch-ac does); ``False`` keeps sb3-contrib's detach.
    :param keyed_dropout: attention dropout with masks drawn from per-step keys carried in the
        actor state and stored in the buffer (``rims_rl.dropout``), so the update recomputes the
        rollout's masks and PPO's ratio is 1 on unchanged weights. Needs ``ChunkedRecurrentPPO`` and a
        core that declares ``supports_keyed_dropout``.
    :param bf16_features: run the features extractor (Atari's CNN) under autocast to bfloat16 and hand
        its features on in float32 (core, heads, loss and buffers stay float32), on every path (training,
        ``predict``, values): faster convolutions on CPUs with AVX512-BF16 and on GPUs (docs/atari.md);
        it changes the numbers a run produces, not its parameters.

    sb3-contrib sizes its state buffers from ``lstm_hidden_state_shape``; here that is
    ``(n_lstm_layers, 1, state_size)`` with the core's own ``state_size``, and the heads read
    ``lstm_output_dim``, the core's output width.
    """

    # sb3-contrib's __init__ types its cores as the nn.LSTM it builds; here they are RecurrentCores
    # (nn.LSTM's interface), built by ``_build_core``.
    lstm_actor: RecurrentCore  # type: ignore[assignment]
    lstm_critic: RecurrentCore | None  # type: ignore[assignment]

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
        bf16_features: bool = False,
    ) -> None:
        # sb3-contrib's own checks first, with its exception type (an assert), then ours.
        if shared_lstm and enable_critic_lstm:
            raise SettingError(
                "choose one of shared_lstm and enable_critic_lstm (or neither: a linear critic)"
            )
        if shared_lstm and not share_features_extractor:
            raise SettingError("shared_lstm=True needs share_features_extractor=True")
        config = resolve_core_config(
            core, lstm_hidden_size, rims_kwargs, n_lstm_layers, core_kwargs, lstm_kwargs
        )
        hidden = config.hidden_size
        if critic_grad_through_core and not shared_lstm:
            raise ValueError(
                "critic_grad_through_core=True needs shared_lstm=True (with its own core or a linear "
                "critic the value loss already trains everything the critic reads)"
            )
        if not isinstance(bf16_features, bool):
            raise ValueError(f"bf16_features must be true or false, got {bf16_features!r}")
        if keyed_dropout and not config.cls.supports_keyed_dropout:
            raise ValueError(
                f"keyed_dropout needs a core with attention dropout (supports_keyed_dropout), "
                f"got core={core!r}"
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
        self._core_config = config
        self.lstm_kwargs = dict(lstm_kwargs or {})
        self.n_lstm_layers = n_lstm_layers
        self.shared_lstm = shared_lstm
        self.enable_critic_lstm = enable_critic_lstm
        self.critic_grad_through_core = critic_grad_through_core
        self.keyed_dropout = keyed_dropout
        self.bf16_features = bf16_features
        self.lstm_actor = self._build_core()
        self.lstm_hidden_state_shape = (n_lstm_layers, 1, self.lstm_actor.state_size)
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

    def _build_core(self) -> RecurrentCore:
        """The actor's (and critic's) core, built before the optimizer; override to build another.

        Cores with native layers take ``num_layers``; others are stacked (``StackedCore``)."""
        cfg = self._core_config
        if cfg.cls.native_layers:
            # native_layers declares that the constructor takes num_layers (the base's does not)
            return cfg.cls(self.features_dim, cfg.hidden_size, num_layers=cfg.n_layers, **cfg.kwargs)  # type: ignore[call-arg]
        if cfg.n_layers == 1:
            return cfg.cls(self.features_dim, cfg.hidden_size, **cfg.kwargs)

        def layer(input_size: int) -> RecurrentCore:
            return cfg.cls(input_size, cfg.hidden_size, **cfg.kwargs)

        return StackedCore(layer, self.features_dim, cfg.hidden_size, cfg.n_layers, cfg.layer_dropout)

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
        if self.bf16_features:  # only when set: older versions still load checkpoints that do not use it
            data["bf16_features"] = True
        return data

    def _install_keyed_dropout(self) -> None:
        """Keyed attention dropout in the actor's (salt 0) and critic's (salt 1) cores."""
        for salt, core in enumerate(c for c in (self.lstm_actor, self.lstm_critic) if c is not None):
            core.install_keyed_dropout(salt)

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
        # sb3-contrib's idiom: the extraction past ActorCriticPolicy's (``_FeaturePrecision``'s, then SB3's)
        features = super(ActorCriticPolicy, self).extract_features(obs, self.vf_features_extractor)
        latent_pi, _ = self._process_sequence(features, lstm_states, episode_starts, self.lstm_actor)
        return self.value_net(self.mlp_extractor.forward_critic(self._shared_critic_latent(latent_pi)))

    # sb3-contrib declares ``tuple[Tensor, Tensor]`` but returns ``(output, (h, c))``, as this one does.
    @staticmethod
    def _process_sequence(  # type: ignore[override]
        features: th.Tensor, lstm_states: State, episode_starts: th.Tensor, lstm: nn.Module
    ) -> tuple[th.Tensor, State]:
        """Run the core over ``[n_seq * T]`` flattened sequences in one call where that is exact.

        Same contract as sb3-contrib's version (state zeroed before each step whose episode_start is
        1). Cores that take ``episode_starts`` handle starts anywhere themselves. For the others, starts
        only on the first step (always the case for sb3-contrib's padded training sequences, and for T=1
        rollout steps) mean: zero the initial state there, then one cuDNN/oneDNN call. Starts inside
        sequences (chunked minibatches): torch LSTM/GRU cores run every episode segment in one or two
        calls (``_run_segments``); other cores fall back to sb3-contrib's per-step loop.
        """
        n_seq = lstm_states[0].shape[1]
        # torch types an unknown Module attribute as Tensor | Module (its __getattr__); every core sets an
        # int input_size in __init__.
        input_size = cast(int, lstm.input_size)
        x = features.reshape((n_seq, -1, input_size)).swapaxes(0, 1)
        starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
        if getattr(lstm, "takes_episode_starts", False):  # a stock nn.LSTM has no such declaration
            out, lstm_states = lstm(x, lstm_states, episode_starts=starts)
        elif not th.any(starts[1:]):
            keep = (1.0 - starts[0]).view(1, n_seq, 1)
            out, lstm_states = lstm(x, (keep * lstm_states[0], keep * lstm_states[1]))
        elif _takes_packed(lstm):
            return _run_segments(x, lstm_states, starts, lstm)
        else:
            # sb3-contrib's per-step loop: it annotates the core as nn.LSTM but uses only input_size and
            # the (h, c) call, which every core provides; it returns (output, (h, c)), not the declared pair.
            per_step = RecurrentActorCriticPolicy._process_sequence
            out_states = per_step(features, lstm_states, episode_starts, lstm)  # type: ignore[arg-type]
            return cast(tuple[th.Tensor, State], out_states)
        return th.flatten(out.transpose(0, 1), start_dim=0, end_dim=1), lstm_states


def _takes_packed(core: nn.Module) -> bool:
    """Whether ``core`` runs a ``PackedSequence`` with an ``(h, c)`` state: ``nn.LSTM`` itself and the
    cores that are a torch RNN (``LSTMCore``, ``GRUCore``), one direction, time-major."""
    is_rnn = isinstance(core, nn.LSTM) or (isinstance(core, TorchRNNCore) and isinstance(core, nn.RNNBase))
    return is_rnn and not core.bidirectional and not core.batch_first


def _run_segments(x: th.Tensor, states: State, starts: th.Tensor, core: nn.Module) -> tuple[th.Tensor, State]:
    """sb3-contrib's per-step loop (state zeroed before each step that starts an episode), in one or
    two calls of ``core`` (a torch LSTM/GRU: ``_takes_packed``) whatever ``T`` and the starts.

    Each sequence is cut at its episode starts into segments: the first segment of a sequence starts
    from its carried state (zeroed if its first step starts an episode), every later one from zeros.
    A sequence's final state is its last segment's state after that segment's own last step.

    - ``nn.LSTM``: all segments run as padded columns in one call, which takes torch's fused CPU kernel
      (oneDNN; its backward is several times faster than a packed sequence's) and gives the outputs at
      the valid steps; its final states are those after the padding, so each sequence's last segment
      runs again, packed, for the final state (in training nothing reads it, so it costs no backward).
    - ``nn.GRU`` (no fused CPU kernel: padded and packed cost about the same): all segments as one
      ``PackedSequence``, which gives both the outputs and each segment's state after its last step.
      The GRU core comes here only where its C++ loop does not run (CUDA, no compiler): on CPU it takes
      the starts itself (``takes_episode_starts``).

    The index computation is vectorised (no Python loop over steps or sequences). With ``dropout``
    between stacked layers in training mode, each call draws its own masks (as each step of the loop does).

    Args:
        x: [T, n_seq, input_size] inputs, time-major.
        states: (h, c), each [num_layers, n_seq, width]: the state before step 0.
        starts: [T, n_seq] episode starts (1 where the state is zeroed before that step).
        core: the torch RNN core.

    Returns:
        out [n_seq * T, hidden] in sb3-contrib's flat order (sequence-major: index ``b * T + t``) and
        the final (h, c), each [num_layers, n_seq, width].
    """
    T, n_seq = starts.shape
    n = T * n_seq
    # Steps in flat sequence-major order (b * T + t); a segment begins at step 0 and at every start.
    begins = (starts != 0).transpose(0, 1).contiguous()  # [n_seq, T]
    begins[:, 0] = True
    begins = begins.flatten()  # [n]
    segment = th.cumsum(begins, 0) - 1  # [n] segment of each step, numbered in flat order
    first = th.nonzero(begins).squeeze(1)  # [S] flat index of each segment's first step
    n_segments = first.numel()
    position = th.arange(n, device=x.device) - first[segment]  # [n] step within its segment
    lengths = th.diff(first, append=first.new_tensor([n]))  # [S]
    # Segments as left-aligned, zero-padded columns [L, S, input_size].
    columns = x.new_zeros((int(lengths.max()), n_segments, x.shape[2]))
    columns = columns.index_put((position, segment), x.transpose(0, 1).reshape(n, x.shape[2]))
    # Initial states [num_layers, S, width]: zeros, except each sequence's first segment, which gets the
    # carried state (zeroed where step 0 starts an episode, as the loop does).
    per_sequence = segment.view(n_seq, T)  # [n_seq, T]
    head, tail = per_sequence[:, 0], per_sequence[:, -1]  # [n_seq] first and last segment of each
    keep = (1.0 - starts[0]).view(1, n_seq, 1)
    h0, c0 = (s.new_zeros((s.shape[0], n_segments, s.shape[2])).index_copy(1, head, keep * s) for s in states)
    pack = nn.utils.rnn.pack_padded_sequence  # takes its lengths on the CPU
    if isinstance(core, nn.LSTM):
        out, _ = core(columns, (h0, c0))  # [L, S, hidden], valid where position < length
        last = pack(columns[:, tail], lengths[tail].cpu(), enforce_sorted=False)
        _, (h, c) = core(last, (h0[:, tail], c0[:, tail]))  # each [num_layers, n_seq, width]
    else:
        out_packed, (h, c) = core(pack(columns, lengths.cpu(), enforce_sorted=False), (h0, c0))
        out, _ = nn.utils.rnn.pad_packed_sequence(out_packed)  # [L, S, hidden]
        h, c = h[:, tail], c[:, tail]
    return out[position, segment], (h, c)


class MlpRimsPolicy(RimsActorCriticPolicy):
    """Policy on flat observations (``FlattenExtractor``); RIMs core unless ``core`` says otherwise."""


class CnnRimsPolicy(RimsActorCriticPolicy):
    """Policy on images (``NatureCNN`` by default, as sb3-contrib's ``CnnLstmPolicy``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("features_extractor_class", NatureCNN)
        super().__init__(*args, **kwargs)


class MultiInputRimsPolicy(RimsActorCriticPolicy):
    """Policy on Dict observations (``CombinedExtractor`` by default)."""

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
