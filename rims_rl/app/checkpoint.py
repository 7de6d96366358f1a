"""Checkpoints that survive crashes and can be loaded without running code from the file.

An SB3 ``.zip`` holds ``data`` (JSON whose ``:serialized:`` fields are cloudpickle, i.e. arbitrary code
on load), ``policy.pth``, ``policy.optimizer.pth`` and ``pytorch_variables.pth``. We add a plain-JSON
entry, ``rims_config.json``, with the resolved config, the observation/action spaces and the step
count. The safe loader rebuilds the model from that JSON (or a run directory's ``config.json``) and
reads only tensors with ``torch.load(weights_only=True)``; the file's pickles are never touched unless
the caller passes ``trust=True``, which uses SB3's normal ``load``.

Writes are atomic: a temp file in the same directory, fsync, ``os.replace``; a crash mid-write leaves
the previous file (and the ``latest`` pointer) as they were.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from rims_rl.agents import ALGORITHMS, infer_algo
from rims_rl.app.atomic import atomic_write_bytes
from rims_rl.app.config import RunConfig
from rims_rl.app.errors import UserError
from rims_rl.app.rundir import checkpoints_dir, final_model
from rims_rl.checks import hint
from rims_rl.envs.untrusted import UntrustedFileError, parse_json

#: The algorithm classes a checkpoint may name (by class name, never imported from the file).
ALGOS: Mapping[str, type[BaseAlgorithm]] = ALGORITHMS
META_NAME = "rims_config.json"
MAX_META_BYTES = 16 * 2**20  # our JSON entry is a few KiB
MAX_TENSOR_BYTES = 2 * 2**30  # policy/optimizer tensors; the paper's Atari RIMs policy is ~10 MiB
META_FORMAT = "rims-rl-checkpoint"
META_VERSION = 1
LATEST_NAME = "latest"
_STEP_RE = re.compile(r"^step_(\d+)\.zip$")


def _pretrained_dir() -> Path:
    """Where the shipped checkpoints are: ``$RIMS_RL_PRETRAINED`` if set, else inside the installed package
    (``rims_rl/pretrained``, package data of the wheel), else the checkout's ``pretrained/``."""
    override = os.environ.get("RIMS_RL_PRETRAINED")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parents[1]
    installed = here / "pretrained"
    return installed if installed.is_dir() else here.parent / "pretrained"


PRETRAINED_DIR = _pretrained_dir()


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, corrupt, wrong format or for other spaces)."""


# ---------------------------------------------------------------------------------------------- spaces
def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A JSON description of a space (type, shape, dtype, n, sub-spaces) to compare without pickles."""
    desc: dict[str, Any] = {"type": type(space).__name__, "repr": repr(space)}
    if isinstance(space, spaces.Dict):
        desc["spaces"] = {k: describe_space(v) for k, v in space.spaces.items()}
    elif isinstance(space, spaces.Tuple):
        desc["spaces"] = [describe_space(s) for s in space.spaces]
    else:
        desc["shape"] = list(space.shape) if space.shape is not None else None
        desc["dtype"] = str(space.dtype) if space.dtype is not None else None
    if isinstance(space, spaces.Discrete):
        desc["n"] = int(space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        desc["nvec"] = [int(n) for n in space.nvec.ravel()]
    return desc


def _structure(desc: Mapping[str, Any]) -> Any:
    """What must be equal for weights to fit (everything but the repr, which shows bounds)."""
    out = {k: v for k, v in desc.items() if k not in ("repr", "spaces")}
    if "spaces" in desc:
        sub = desc["spaces"]
        out["spaces"] = (
            {k: _structure(v) for k, v in sub.items()}
            if isinstance(sub, dict)
            else [_structure(v) for v in sub]
        )
    return out


def _structure_or_error(desc: Any, where: str) -> Any:
    try:
        return _structure(desc)
    except (AttributeError, TypeError) as err:
        raise CheckpointError(f"checkpoint space description{where} is invalid: {err}") from err


def check_spaces(
    meta: CheckpointMeta, observation_space: spaces.Space, action_space: spaces.Space, where: str = ""
) -> None:
    """Raise ``CheckpointError`` naming both spaces when the checkpoint was trained on other spaces."""
    for kind, space in (("observation", observation_space), ("action", action_space)):
        saved = meta.observation_space if kind == "observation" else meta.action_space
        if saved is None:
            continue
        here = describe_space(space)
        if _structure_or_error(saved, where) != _structure(here):
            raise CheckpointError(
                f"checkpoint {kind} space does not match the environment{where}: checkpoint has "
                f"{saved.get('repr', saved)}, environment has {here['repr']}"
            )


# ------------------------------------------------------------------------------------------------ meta
@dataclass(frozen=True)
class CheckpointMeta:
    """Our ``rims_config.json`` entry, read without unpickling and validated field by field."""

    algo: str
    """The SB3 algorithm class name (a key of ``ALGOS``); the config's ``model.algo`` when the entry has
    none."""
    num_timesteps: int
    """Environment steps trained."""
    config: RunConfig
    """The run config the model was trained with (its ``model`` preset rebuilds the model)."""
    observation_space: Mapping[str, Any] | None = None
    """The training env's observation space (``describe_space``)."""
    action_space: Mapping[str, Any] | None = None
    """The training env's action space."""
    run_dir: str | None = None
    """The run directory it was saved from (information only; never used as a path)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry."""
        return {
            "format": META_FORMAT,
            "version": META_VERSION,
            "algo": self.algo,
            "num_timesteps": self.num_timesteps,
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "config": self.config.to_dict(),
            "run_dir": self.run_dir,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointMeta:
        """From the JSON entry; ``ValueError`` names the first bad field."""
        config = RunConfig.from_dict(data["config"])
        algo, steps = data.get("algo", config.model.algo), data.get("num_timesteps", 0)
        if algo not in ALGOS:
            raise ValueError(f"algo must be one of {tuple(ALGOS)}, got {algo!r}")
        if algo != config.model.algo:
            raise ValueError(f"algo {algo!r} is not the config's model.algo {config.model.algo!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"num_timesteps must be a non-negative integer, got {steps!r}")
        spaces_ = {k: data.get(k) for k in ("observation_space", "action_space")}
        for key, value in spaces_.items():
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{key} must be an object, got {value!r}")
        run_dir = data.get("run_dir")
        return cls(
            algo=algo,
            num_timesteps=steps,
            config=config,
            observation_space=spaces_["observation_space"],
            action_space=spaces_["action_space"],
            run_dir=run_dir if isinstance(run_dir, str) else None,
        )


# ------------------------------------------------------------------------------------------------ save
def save_checkpoint(
    model: BaseAlgorithm, path: str | Path, config: RunConfig, run_dir: str | None = None
) -> Path:
    """Save ``model`` as an SB3 zip plus our ``rims_config.json``, atomically.

    The entry holds the run config, so the safe loader can rebuild the model from JSON alone.
    """
    meta = CheckpointMeta(
        algo=type(model).__name__,
        num_timesteps=int(model.num_timesteps),
        config=config,
        # The env's own spaces (SB3 may have wrapped the env, e.g. transposed images), as in config.json.
        observation_space=config.observation_space or describe_space(model.observation_space),
        action_space=config.action_space or describe_space(model.action_space),
        run_dir=run_dir,
    )
    buf = io.BytesIO()
    try:
        model.save(buf)
    except RuntimeError as err:
        # A second Ctrl-C inside torch.save: torch's zip writer, closing, turns the KeyboardInterrupt into
        # "unexpected pos". It is still the user's abort (exit 130); nothing reached the disk.
        if isinstance(err.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(META_NAME, json.dumps(meta.to_dict(), indent=2))
    return atomic_write_bytes(path, buf.getvalue())


def write_latest(checkpoint_dir: str | Path, checkpoint: str | Path) -> Path:
    """Point ``checkpoint_dir/latest`` at ``checkpoint`` (a file name in that directory), atomically."""
    return atomic_write_bytes(Path(checkpoint_dir) / LATEST_NAME, (Path(checkpoint).name + "\n").encode())


def step_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_<n>.zip`` in the directory, oldest first."""
    out = []
    directory = Path(checkpoint_dir)
    if directory.is_dir():
        for p in directory.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest readable ``step_*.zip``.

    Not the ``latest`` pointer: a kill between writing a checkpoint and moving the pointer would leave
    the pointer one interval behind a good, newer checkpoint. The pointer stays for people and tools.
    """
    for _, path in reversed(step_checkpoints(checkpoint_dir)):
        if _readable(path):
            return path
    return None


def _readable(path: Path) -> bool:
    try:
        read_meta(path)
    except CheckpointError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ load
def open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a valid zip file (truncated or corrupt?): {err}"
        ) from err
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    return zf


def read_member(zf: zipfile.ZipFile, name: str, path: Path, limit: int) -> bytes:
    """One entry, at most ``limit`` bytes decompressed: a zip bomb or a giant tensor is refused, not read;
    a damaged, encrypted or oddly compressed one is a ``CheckpointError`` (one line), never a traceback."""
    try:
        with zf.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: entry {name!r} is larger than {limit // 2**20} MiB uncompressed; "
                "refused (a damaged or hostile file, or a model far beyond this project's sizes)"
            )
        return data
    except KeyError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no {name!r} entry: not an SB3/rims-rl checkpoint"
        ) from err
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:  # a bad CRC, a truncated member
        raise CheckpointError(f"checkpoint {str(path)!r}: entry {name!r} is corrupt: {err}") from err
    except (RuntimeError, NotImplementedError) as err:  # an encrypted member, an unknown compression
        raise CheckpointError(f"checkpoint {str(path)!r}: entry {name!r} cannot be read: {err}") from err


def read_meta(path: str | Path) -> CheckpointMeta:
    """Our JSON entry of a checkpoint (no unpickling); ``CheckpointError`` if absent or unreadable."""
    path = Path(path)
    with open_zip(path) as zf:
        if META_NAME not in zf.namelist():
            if "data" not in zf.namelist():  # never suggest trusting a damaged file
                raise CheckpointError(
                    f"checkpoint {str(path)!r} is truncated, corrupt or not an SB3 checkpoint: its zip holds "
                    f"neither {META_NAME!r} nor SB3's 'data' entry"
                )
            raise CheckpointError(
                f"checkpoint {str(path)!r} is an SB3 checkpoint without rims-rl metadata (no {META_NAME!r}); "
                "loading it would unpickle code from the file: if you trust its source, pass "
                "--trust-checkpoint (trust=True)"
            )
        raw = read_member(zf, META_NAME, path, MAX_META_BYTES)
    try:
        meta = parse_json(raw, f"checkpoint {str(path)!r}: its {META_NAME}")
    except UntrustedFileError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: {META_NAME} is not a {META_FORMAT} entry")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: {META_NAME} lacks the model config")
    try:
        return CheckpointMeta.from_dict(meta)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: its {META_NAME} is invalid: {err}") from err


def _load_tensors(zf: zipfile.ZipFile, name: str, path: Path, device: th.device | str) -> Any:
    raw = read_member(zf, name, path, MAX_TENSOR_BYTES)
    try:
        with warnings.catch_warnings():  # torch's note on protocol-5 pickles: the refusal below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return th.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError for bad archives, ...
        raise CheckpointError(
            f"checkpoint {str(path)!r}: {name!r} is not a plain tensor file (refused to unpickle it, or "
            f"it is corrupt): {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err


def load_weights(model: BaseAlgorithm, path: str | Path, optimizer: bool = False) -> None:
    """Load ``policy.pth`` (and ``policy.optimizer.pth``) into ``model`` with ``weights_only=True``."""
    path = Path(path)
    with open_zip(path) as zf:
        state = _load_tensors(zf, "policy.pth", path, model.device)
        _check_finite(state, path)
        try:
            model.policy.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: weights do not fit the model built from its config: "
                f"{str(err).splitlines()[0]}"
            ) from err
        if optimizer and "policy.optimizer.pth" in zf.namelist():
            opt_state = _load_tensors(zf, "policy.optimizer.pth", path, model.device)
            try:
                model.policy.optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(
                    f"checkpoint {str(path)!r}: optimizer state does not fit: {err}"
                ) from err


def _check_finite(state: Any, path: Path) -> None:
    """Refuse NaN or infinite weights: they load, then every episode fails inside the action sampler."""
    if not isinstance(state, Mapping):
        return  # load_state_dict names what is wrong with it
    for name, tensor in state.items():
        if isinstance(tensor, th.Tensor) and tensor.is_floating_point() and not th.isfinite(tensor).all():
            raise CheckpointError(
                f"checkpoint {str(path)!r}: its weights hold NaN or infinite values ({name}); a diverged "
                "or damaged model, refused"
            )


def load_trusted(path: str | Path, env: VecEnv | None, device: str = "auto") -> BaseAlgorithm:
    """SB3's own ``load`` (unpickles code from the file): only for checkpoints from a trusted source."""
    path = Path(path)
    with open_zip(path) as zf:
        names = set(zf.namelist())
        algo = None
        if META_NAME in names:
            try:
                meta = parse_json(read_member(zf, META_NAME, path, MAX_META_BYTES))
                algo = meta.get("algo") if isinstance(meta, dict) else None
            except UntrustedFileError:
                algo = None
        if algo is None and "data" in names:
            try:
                raw = read_member(zf, "data", path, MAX_META_BYTES)
                data = parse_json(raw, f"checkpoint {str(path)!r}: 'data'")
            except UntrustedFileError as err:
                raise CheckpointError(str(err)) from err
            if not isinstance(data, dict):
                raise CheckpointError(f"checkpoint {str(path)!r}: 'data' is not a JSON object")
            algo = infer_algo(
                "RecurrentPPO" if "_last_lstm_states" in data else "PPO", data.get("chunk_length")
            )
    cls = ALGOS.get(algo or "", None)
    if cls is None:
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot tell its algorithm (no 'data' entry)")
    try:
        with _legacy_module_names():
            return cls.load(path, env=env, device=device)
    except ValueError as err:  # SB3's space checks
        raise CheckpointError(f"checkpoint {str(path)!r}: {err}") from err
    except (KeyError, EOFError, zipfile.BadZipFile, RuntimeError, ModuleNotFoundError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} could not be loaded by SB3: {err}") from err


#: Modules that moved, by the name pickles made before the move refer to them.
LEGACY_MODULES = {"envs.minigrid_features": "rims_rl.extractors"}


@contextlib.contextmanager
def _legacy_module_names() -> Iterator[None]:
    """Let a trusted checkpoint saved before a module moved unpickle its classes from the new place."""
    added = [old for old in LEGACY_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(LEGACY_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def resolve_checkpoint(name: str | Path) -> Path:
    """A checkpoint path from a ``.zip``, a run directory, or a pretrained alias (``pretrained/<alias>``).

    Run directories give ``model.zip`` if training finished, else their newest checkpoint.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        return _checkpoint_in_dir(path)
    alias = PRETRAINED_DIR / str(name)
    if "/" not in str(name) and alias.is_dir():
        return _checkpoint_in_dir(alias)
    aliases = list_pretrained()
    listed = ", ".join(aliases) if aliases else f"none (no models under {PRETRAINED_DIR})"
    raise CheckpointError(
        f"checkpoint {str(name)!r} is not a file, a run directory or a pretrained alias"
        f"{hint(name, aliases)}; pretrained aliases: {listed}"
    )


def pretrained_alias(checkpoint: Path) -> str | None:
    """The alias of a checkpoint shipped in ``pretrained/``, else None: its folder is kept as shipped."""
    # Not resolved: an alias (or its model.zip) that is a symbolic link is still the alias, and its eval
    # files go to runs/eval/<alias>, never into the link's target.
    # Resolved too: a link of the user's pointing into pretrained/ (in an installed package, inside
    # site-packages) is that alias, so its eval files never land in the package.
    for folder in (Path(os.path.abspath(checkpoint)).parent, Path(checkpoint).resolve().parent):
        for shipped in (Path(os.path.abspath(PRETRAINED_DIR)), PRETRAINED_DIR.resolve()):
            if folder.parent == shipped:
                return folder.name
    return None


def list_pretrained() -> list[str]:
    """Aliases of the pretrained models shipped in ``pretrained/`` (folders holding a ``model.zip``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if final_model(p).is_file())


def _checkpoint_in_dir(directory: Path) -> Path:
    final = final_model(directory)
    if final.is_file():
        return final
    found = latest_checkpoint(checkpoints_dir(directory))
    if found is None:
        raise CheckpointError(f"{str(directory)!r} holds no model.zip and no readable checkpoints/step_*.zip")
    return found
