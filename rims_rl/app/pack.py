"""A run's resume form: the few files that let a stopped run continue on another machine.

A long run (the Atari campaign) outlives its machine only if what it needs is somewhere else, and the
one place that survives here is the repository, so the form must be small enough to commit. A run
directory holds many checkpoints, TensorBoard files and the env logs; to continue it needs only:

- ``config.json`` (the resolved run config) and ``status.json``;
- ``logs/*.csv`` (SB3's scalars, so the learning curve keeps its start);
- its newest readable checkpoint, with the optimizer's moments in bfloat16 by default (Adam's state is
  twice the weights: an Atari agent's 40 MB checkpoint packs to about 26 MB; ``optimizer="none"`` keeps
  only the weights, 13 MB, and the resumed run starts a fresh optimizer). torch casts a loaded optimizer
  state to its parameters' dtype, so a bfloat16 state resumes as float32 without a conversion step.

``unpack_run`` checks every member (names, sizes, the checkpoint and the config) before writing, and
writes only inside the run directory it is given. ``train --resume DIR`` (or the compare that owns the
run) then continues from the checkpoint: the step count, the learning-rate and clip schedules (functions
of the step count and the budget) and the optimizer continue; the envs start new episodes, seeded from
the run's seed and the step reached, as every resume does.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch as th

from rims_rl.app import rundir
from rims_rl.app.atomic import atomic_write_bytes
from rims_rl.app.checkpoint import CheckpointError, latest_checkpoint, read_meta
from rims_rl.app.errors import UserError
from rims_rl.app.runs import read_run_config

OPTIMIZER_MEMBER = "policy.optimizer.pth"
#: Members of a checkpoint a resume reads (``load_weights``, ``read_meta``); the rest is not packed.
RESUME_MEMBERS = ("policy.pth", OPTIMIZER_MEMBER, "rims_config.json")
MAX_MEMBER_BYTES = 512 * 2**20  # a checkpoint; a Pong agent's is 40 MB
MAX_LOG_BYTES = 64 * 2**20
_MEMBER = re.compile(r"(config\.json|status\.json|logs/[A-Za-z0-9_.-]+\.csv|checkpoints/step_\d+\.zip)")

Optimizer = Literal["bf16", "fp32", "none"]
OPTIMIZER_CHOICES: tuple[str, ...] = ("bf16", "fp32", "none")


def _cast(value: Any, dtype: th.dtype) -> Any:
    """Floating tensors of a (nested) optimizer state to ``dtype``; step counts and the rest as they are."""
    if isinstance(value, th.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dim() > 0 else value
    if isinstance(value, Mapping):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    return value


def slim_checkpoint(path: Path, optimizer: Optimizer, members: tuple[str, ...] | None = None) -> bytes:
    """A copy of checkpoint ``path`` holding ``members`` (None: all) with the optimizer state cast to
    bfloat16, kept (``fp32``) or dropped (``none``): what ``pack`` commits and ``pretrained/`` ships.
    Each member is read under ``MAX_MEMBER_BYTES`` (a zip bomb is refused, not inflated)."""
    buf = io.BytesIO()
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                name = info.filename
                if (members is not None and name not in members) or (
                    name == OPTIMIZER_MEMBER and optimizer == "none"
                ):
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    raise UserError(
                        f"{path}: {name!r} is larger than {MAX_MEMBER_BYTES // 2**20} MiB; refused"
                    )
                with src.open(info) as f:
                    data = f.read(MAX_MEMBER_BYTES + 1)
                if len(data) > MAX_MEMBER_BYTES:
                    raise UserError(
                        f"{path}: {name!r} inflates past {MAX_MEMBER_BYTES // 2**20} MiB; refused"
                    )
                if name == OPTIMIZER_MEMBER and optimizer == "bf16":
                    state = th.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                    out = io.BytesIO()
                    th.save(_cast(state, th.bfloat16), out)
                    data = out.getvalue()
                dst.writestr(name, data)
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as err:
        raise UserError(f"{path} cannot be read as a checkpoint: {err}") from err
    return buf.getvalue()


def pack_run(run_dir: str | Path, out: str | Path, optimizer: Optimizer = "bf16") -> Path:
    """Write ``out``: the resume form of ``run_dir`` (see the module); ``UserError`` when it cannot be one."""
    run = Path(run_dir)
    if optimizer not in OPTIMIZER_CHOICES:
        raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZER_CHOICES)}, got {optimizer!r}")
    read_run_config(run)  # a run directory with a valid config, or one line saying what it is not
    checkpoint = latest_checkpoint(rundir.checkpoints_dir(run))
    if checkpoint is None:
        raise UserError(f"{run} has no readable checkpoint yet; pack it after its first checkpoint")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(rundir.config_path(run), "config.json")
        if (run / rundir.STATUS_NAME).is_file():
            zf.write(run / rundir.STATUS_NAME, "status.json")
        logs = run / rundir.LOGS_DIR
        for log in sorted(logs.glob("*.csv")) if logs.is_dir() and not logs.is_symlink() else []:
            if log.is_file() and not log.is_symlink() and log.stat().st_size <= MAX_LOG_BYTES:
                zf.write(log, f"logs/{log.name}")
        zf.writestr(f"checkpoints/{checkpoint.name}", slim_checkpoint(checkpoint, optimizer, RESUME_MEMBERS))
    return atomic_write_bytes(out, buf.getvalue())


def unpack_run(form: str | Path, run_dir: str | Path) -> tuple[Path, int]:
    """Recreate a resumable run directory from a resume form; return it and the steps its checkpoint holds.

    The form is untrusted: only the expected member names, each under a size cap, a checkpoint that
    reads as one and a config that parses, and nothing written outside ``run_dir``, which must not hold
    a run already.
    """
    form, run = Path(form), Path(run_dir)
    if rundir.is_run_dir(run):
        raise UserError(f"{run} already holds a run; unpack into a new directory (or resume that one)")
    try:
        zf = zipfile.ZipFile(form)
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{str(form)!r} is not a resume form (a zip from `pack`): {err}") from err
    with zf:
        members: dict[str, bytes] = {}
        for info in zf.infolist():
            if not _MEMBER.fullmatch(info.filename):
                raise UserError(
                    f"{str(form)!r} holds {info.filename!r}, not a member of a resume form; refused"
                )
            if info.file_size > MAX_MEMBER_BYTES:
                raise UserError(
                    f"{str(form)!r}: {info.filename!r} is larger than {MAX_MEMBER_BYTES // 2**20} MiB"
                )
            try:
                with zf.open(info) as f:
                    members[info.filename] = f.read(MAX_MEMBER_BYTES + 1)[:MAX_MEMBER_BYTES]
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as err:
                raise UserError(f"{str(form)!r}: {info.filename!r} cannot be read: {err}") from err
    checkpoints = [name for name in members if name.startswith("checkpoints/")]
    if "config.json" not in members or len(checkpoints) != 1:
        raise UserError(f"{str(form)!r} must hold config.json and one checkpoint; it is not a resume form")
    rundir.check_no_links(run)
    for name, data in members.items():
        atomic_write_bytes(run / name, data)
    try:
        read_run_config(run)
        steps = read_meta(run / checkpoints[0]).num_timesteps
    except (UserError, CheckpointError) as err:
        for name in members:  # leave no half-run behind
            (run / name).unlink(missing_ok=True)
        raise UserError(f"{str(form)!r} does not hold a usable run: {err}") from err
    return run, steps
