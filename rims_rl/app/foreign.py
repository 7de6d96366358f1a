"""Other people's SB3 / sb3-contrib checkpoints, loaded without unpickling anything.

An SB3 zip's ``data`` entry is JSON; each field that SB3 could not write as JSON holds a cloudpickle blob
(``:serialized:``) *beside* readable attributes. We read only the readable parts: the policy class (the
module and name its pickle refers to, read from the pickle's opcodes without running them; else the
qualified name of its ``__init__``), the spaces' shape and dtype, plain-JSON ``policy_kwargs``, the step
count. SB3's own policies and ours (``MlpRimsPolicy`` ..., e.g. saved by RL Zoo) are rebuilt this way:
the policy is rebuilt from a known class and the tensors are read with
``torch.load(weights_only=True)`` (``checkpoint.load_weights``). What cannot be read this way is refused
with a pointer to ``--trust-checkpoint``.

Evaluation wrappers: an Atari agent trained on SB3's ``make_atari_env`` + ``VecFrameStack(n)`` saved an
observation space of ``(n, 84, 84)`` uint8 (after SB3's channel transpose); the frame stack ``n`` is read
from it unless the user gives ``env.frame_stack``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch as th
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from rims_rl.agents.config import check_lstm_kwargs, check_model_size
from rims_rl.app.checkpoint import META_NAME, CheckpointError, load_weights, open_zip, read_member
from rims_rl.envs.untrusted import UntrustedFileError, check_tree, parse_json
from rims_rl.extractors import MiniGridCNN, MiniGridDictExtractor
from rims_rl.policies import CnnRimsPolicy, MlpRimsPolicy, MultiInputRimsPolicy
from rims_rl.spatial import SpatialCNN, SpatialCnnRimsPolicy

_POLICY_CLASSES: tuple[type, ...] = (
    RecurrentActorCriticPolicy,
    RecurrentActorCriticCnnPolicy,
    RecurrentMultiInputActorCriticPolicy,
    ActorCriticPolicy,
    ActorCriticCnnPolicy,
    MultiInputActorCriticPolicy,
    MlpRimsPolicy,
    CnnRimsPolicy,
    MultiInputRimsPolicy,
    SpatialCnnRimsPolicy,
)
#: Policy classes a foreign checkpoint may name (by class name; nothing is imported from the file).
POLICIES: dict[str, type] = {cls.__name__: cls for cls in _POLICY_CLASSES}
#: The same classes by the (module, qualified name) a pickle refers to them by.
_PICKLED_POLICIES: dict[tuple[str, str], type] = {(c.__module__, c.__qualname__): c for c in _POLICY_CLASSES}
#: Classes that SB3 policies take as arguments (optimisers, activations, feature extractors: SB3's and
#: ours), by the ``repr`` SB3 writes beside their pickle.
KNOWN_CLASSES: dict[str, type] = {
    f"<class '{cls.__module__}.{cls.__qualname__}'>": cls
    for cls in (
        th.optim.Adam,
        th.optim.AdamW,
        th.optim.RMSprop,
        th.optim.SGD,
        nn.ReLU,
        nn.Tanh,
        nn.ELU,
        nn.GELU,
        nn.LeakyReLU,
        nn.SiLU,
        FlattenExtractor,
        NatureCNN,
        CombinedExtractor,
        MiniGridCNN,
        MiniGridDictExtractor,
        SpatialCNN,
    )
}
MAX_DATA_BYTES = 16 * 2**20
MAX_REFERENCE_CHARS = 1024  # base64 of a pickled class reference (module + name) is ~80 characters
MAX_LITERAL_CHARS = 10_000  # a readable policy_kwargs value ("[64, 64]", "{'pi': [64], 'vf': [64]}")
_INIT_RE = re.compile(r"<function (\w+)\.__init__ at ")
#: A policy_kwargs value that is neither a literal nor an object's ``repr``: a plain string, kept as data,
#: only for the policy arguments that take a string (any other would be an object's ``str``).
STRING_KWARGS = frozenset({"core"})
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.\-/ ]{1,200}")


@dataclass(frozen=True)
class ForeignCheckpoint:
    """What a foreign SB3 checkpoint's JSON says, read without unpickling."""

    algo: str
    """``RecurrentPPO``, ``PPO`` or ``A2C``."""
    policy: str
    """The policy class name (a key of ``POLICIES``)."""
    policy_kwargs: Mapping[str, Any]
    """Plain-JSON keyword arguments of the policy."""
    observation_shape: tuple[int, ...]
    """The saved observation shape (images channel-first, as SB3 transposes them)."""
    num_timesteps: int
    """Environment steps trained."""

    def frame_stack(self) -> int | None:
        """Frames stacked by the training env, for an Atari-shaped (n, 84, 84) image; None otherwise."""
        shape = self.observation_shape
        if len(shape) == 3 and shape[1:] == (84, 84) and 1 <= shape[0] <= 16:
            return shape[0]
        return None


def is_foreign(path: str | Path) -> bool:
    """An SB3 zip with a ``data`` entry and without our ``rims_config.json``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return "data" in names and META_NAME not in names


def read_foreign(path: str | Path) -> ForeignCheckpoint:
    """The readable parts of an SB3 checkpoint's ``data``; ``CheckpointError`` for anything else."""
    where = f"checkpoint {str(path)!r}"
    with open_zip(Path(path)) as zf:
        raw = read_member(zf, "data", Path(path), MAX_DATA_BYTES)
    try:
        data = parse_json(raw, f"{where}: its 'data' entry")
    except UntrustedFileError as err:
        raise CheckpointError(str(err)) from err
    policy_class = data.get("policy_class") if isinstance(data, dict) else None
    policy = _policy_name(policy_class)
    if policy is None:
        raise CheckpointError(
            f"{where}: its policy class is not one this loader can rebuild without unpickling "
            f"({', '.join(POLICIES)}); if you trust the file, pass --trust-checkpoint"
        )
    recurrent = issubclass(POLICIES[policy], RecurrentActorCriticPolicy)
    algo = "RecurrentPPO" if recurrent else ("PPO" if "clip_range" in data else "A2C")
    kwargs = _readable_kwargs(data.get("policy_kwargs") or {}, where)
    try:  # bounded before anything is built: a crafted size would hang or fill the memory
        check_model_size(kwargs)
        check_lstm_kwargs(kwargs.get("lstm_kwargs"))
        if kwargs.get("squash_output", False) is not False:
            raise ValueError("squash_output applies only with gSDE (use_sde), which is not rebuilt here")
    except ValueError as err:
        raise CheckpointError(f"{where}: its policy cannot be rebuilt: {err}") from err
    obs = data.get("observation_space")
    shape = obs.get("_shape") if isinstance(obs, dict) else None
    if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
        raise CheckpointError(f"{where}: its observation space has no readable shape")
    steps = data.get("num_timesteps", 0)
    return ForeignCheckpoint(
        algo=algo,
        policy=policy,
        policy_kwargs=kwargs,
        observation_shape=tuple(shape),
        num_timesteps=steps if isinstance(steps, int) and steps >= 0 else 0,
    )


def _policy_name(policy_class: Any) -> str | None:
    """The name (a key of ``POLICIES``) of the class SB3 stored, or None for any other class.

    The class's pickle is read as a list of opcodes (``pickletools.genops`` parses, it never imports or
    calls): a class pickled by reference is one ``GLOBAL``/``STACK_GLOBAL`` of its module and name. Where
    the pickle is absent or is not such a reference, the qualified name of the class's own ``__init__`` is
    the fallback, and only if the readable ``__module__`` is that class's module too: a class defined in a
    user's script (pickled by value, ``__module__`` ``'__main__'``) is not taken for the stock class whose
    ``__init__`` it inherits.
    """
    if not isinstance(policy_class, dict):
        return None
    blob = policy_class.get(":serialized:")
    if isinstance(blob, str):
        ref = _pickled_reference(blob)
        if ref is not None:
            cls = _PICKLED_POLICIES.get(ref)
            return None if cls is None else cls.__name__
    match = _INIT_RE.match(str(policy_class.get("__init__", "")))
    if match is None or match.group(1) not in POLICIES:
        return None
    name = match.group(1)
    return name if policy_class.get("__module__") == POLICIES[name].__module__ else None


def _pickled_reference(blob: str) -> tuple[str, str] | None:
    """``(module, qualname)`` of a pickle that is exactly one global reference; None for anything else.

    A reference is under 200 bytes: a longer blob is not one, and is not parsed (a crafted 16 MiB blob
    would be millions of opcodes held in memory).
    """
    if len(blob) > MAX_REFERENCE_CHARS:
        return None
    try:
        raw = base64.b64decode(blob, validate=True)
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    except (binascii.Error, ValueError):
        return None
    bookkeeping = ("PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP")
    names = [n for n, _ in ops if n not in bookkeeping]
    strings = [a for n, a in ops if n in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(a, str)]
    if names == ["GLOBAL"]:
        module, _, name = str(ops[[n for n, _ in ops].index("GLOBAL")][1]).partition(" ")
        return module, name
    if len(names) == 3 and names[2] == "STACK_GLOBAL" and len(strings) == 2:
        return strings[0], strings[1]
    return None


def _readable_kwargs(value: Any, where: str) -> dict[str, Any]:
    """``policy_kwargs`` from their readable form: plain JSON, or (beside SB3's pickle) each value as SB3
    wrote it: JSON values as they are, others as their ``str``, which must be a literal
    (``ast.literal_eval``), one of ``KNOWN_CLASSES`` or plain text (a JSON string such as ``core='rims'``)."""
    refuse = CheckpointError(
        f"{where}: its policy_kwargs hold objects (custom classes or functions) that cannot be read safely; "
        "if you trust the file, pass --trust-checkpoint"
    )
    if not isinstance(value, dict):
        raise refuse
    if ":serialized:" not in value:
        if any(isinstance(v, dict) and ":serialized:" in v for v in value.values()):
            raise refuse
        return dict(value)
    out: dict[str, Any] = {}
    for key, text in value.items():
        if key in (":type:", ":serialized:"):
            continue
        if not isinstance(text, str):  # SB3 writes JSON-able values as they are
            if isinstance(text, dict) and ":serialized:" in text:
                raise refuse
            out[key] = text
            continue
        if text in KNOWN_CLASSES:
            out[key] = KNOWN_CLASSES[text]
            continue
        if len(text) > MAX_LITERAL_CHARS:  # literal_eval of megabytes takes seconds and builds as much
            raise CheckpointError(
                f"{where}: its policy_kwargs entry {key!r} is {len(text)} characters long; at most "
                f"{MAX_LITERAL_CHARS}"
            )
        try:
            out[key] = ast.literal_eval(text)
            check_tree(out[key], f"its policy_kwargs entry {key!r}")
        except UntrustedFileError as err:
            raise CheckpointError(f"{where}: {err}") from err
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
            if key in STRING_KWARGS and _PLAIN_TEXT.fullmatch(text):  # a JSON string SB3 kept as it is
                out[key] = text
                continue
            raise refuse from err
    return out


def load_foreign(
    path: str | Path, foreign: ForeignCheckpoint, env: VecEnv, device: str = "cpu"
) -> BaseAlgorithm:
    """The foreign policy rebuilt on ``env`` from its class and kwargs, with its tensors loaded safely."""
    algos: dict[str, type[BaseAlgorithm]] = {"RecurrentPPO": RecurrentPPO, "PPO": PPO, "A2C": A2C}
    algo = algos[foreign.algo]
    extra: dict[str, Any] = {"n_steps": 2}
    if foreign.algo != "A2C":
        extra["batch_size"] = 2
    try:
        model = algo(
            POLICIES[foreign.policy], env, policy_kwargs=dict(foreign.policy_kwargs), device=device, **extra
        )
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:  # its kwargs are untrusted data
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {str(path)!r}: its policy cannot be rebuilt: {message}") from err
    here = model.observation_space.shape
    if here != foreign.observation_shape:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained on observations of shape {foreign.observation_shape}, "
            f"this environment gives {here}: set its wrappers (e.g. --set env.frame_stack=4)"
        )
    load_weights(model, path)
    model.num_timesteps = foreign.num_timesteps
    return model
