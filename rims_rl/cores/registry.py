"""Where core names come from: the entry-point group ``rims_rl.cores``.

A core is a :class:`~rims_rl.cores.base.RecurrentCore` subclass named by an entry point::

    [project.entry-points."rims_rl.cores"]
    rims = "rims_rl.cores.rims:RIMs"          # rims-rl's own pyproject.toml
    leaky = "leaky_core:LeakyCore"             # an outside package's

Once installed, the name works wherever a built-in core's does (``policy_kwargs={"core": "leaky"}``,
``train --core leaky``). The built-in cores register the same way, so nothing in the project lists them.
Entry points are read on first use and again when a name is not found (a package installed or put on
``sys.path`` since); :func:`register_core` adds a class directly (tests, notebooks).
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

from rims_rl.checks import hint
from rims_rl.cores.base import RecurrentCore

ENTRY_POINT_GROUP = "rims_rl.cores"

_REGISTERED: dict[str, type[RecurrentCore]] = {}  # register_core(): kept across entry-point reloads
_FOUND: dict[str, type[RecurrentCore]] = {}  # from entry points
_SCANNED = False


def _checked(name: str, cls: object, where: str) -> type[RecurrentCore]:
    if not (isinstance(cls, type) and issubclass(cls, RecurrentCore)):
        raise TypeError(
            f"core {name!r} ({where}) must be a rims_rl.cores.RecurrentCore subclass, got {cls!r}"
        )
    return cls


def _scan() -> None:
    """(Re)read the entry points of the group; a broken plug-in fails with its name and entry point."""
    global _SCANNED
    found: dict[str, type[RecurrentCore]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue  # the first distribution on sys.path wins, as importlib does for modules
        try:
            cls = ep.load()
        except Exception as err:  # an outside package's import error: say which plug-in it is
            raise ImportError(f"cannot load core {ep.name!r} from entry point {ep.value!r}: {err}") from err
        found[ep.name] = _checked(ep.name, cls, f"entry point {ep.value!r}")
    _FOUND.clear()
    _FOUND.update(found)
    _SCANNED = True


def register_core(name: str, cls: type[RecurrentCore], overwrite: bool = False) -> None:
    """Register ``cls`` as ``name`` without an entry point (the entry point is the way for packages)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"core name must be an identifier, got {name!r}")
    _checked(name, cls, "register_core")
    if not overwrite and name in core_names():
        raise ValueError(f"core {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTERED[name] = cls


def _all() -> dict[str, type[RecurrentCore]]:
    if not _SCANNED:
        _scan()
    return {**_FOUND, **_REGISTERED}


def core_names() -> tuple[str, ...]:
    """Every registered core name, sorted."""
    return tuple(sorted(_all()))


def get_core(name: str) -> type[RecurrentCore]:
    """The core class registered as ``name``; ``ValueError`` with the closest names otherwise."""
    cores = _all()
    if name not in cores and isinstance(name, str):
        _scan()  # installed since the last scan?
        cores = _all()
    if name not in cores:
        names = tuple(sorted(cores))
        close = hint(name, names)
        if not names:
            close = "; no cores are registered: install rims-rl (pip install -e .) so its entry points exist"
        raise ValueError(f"unknown core {name!r}{close} (registered: {', '.join(names)})")
    return cores[name]


def core_parameters(cls: type[RecurrentCore]) -> tuple[str, ...]:
    """The keyword arguments of a core's constructor other than the sizes (what ``core_kwargs`` may set)."""
    params = inspect.signature(cls.__init__).parameters
    return tuple(
        n
        for n, p in params.items()
        if n not in ("self", "input_size", "hidden_size") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    )


def core_settings(cls: type[RecurrentCore]) -> tuple[str, ...]:
    """What ``core_kwargs`` (``--set core.KEY=...``) may set: the constructor's keywords except the sizes
    and ``num_layers`` (the policy's ``n_lstm_layers``), plus the core's ``width_kwargs``."""
    return tuple(p for p in core_parameters(cls) if p != "num_layers") + tuple(cls.width_kwargs)


def core_defaults(cls: type[RecurrentCore]) -> dict[str, Any]:
    """The constructor's default arguments (what ``train.py list cores`` shows)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: params[n].default for n in core_parameters(cls) if params[n].default is not params[n].empty}
