"""Where core names come from: the entry-point group ``rims_rl.cores``.

A core is a :class:`~rims_rl.cores.base.RecurrentCore` subclass named by an entry point::

    [project.entry-points."rims_rl.cores"]
    rims = "rims_rl.cores.rims:RIMs"          # rims-rl's own pyproject.toml
    leaky = "leaky_core:LeakyCore"             # an outside package's

Once installed, the name works wherever a built-in core's does (``policy_kwargs={"core": "leaky"}``,
``train --core leaky``). The built-in cores register the same way, so nothing in the project lists them.
Entry points are read on first use and again when a name is not found (a package installed or put on
``sys.path`` since), and each is imported only when its name is asked for: a plug-in that fails to import
fails alone (``CoreLoadError``, one line), and the built-ins keep working. :func:`register_core` adds a
class directly (tests, notebooks).
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from rims_rl.checks import hint
from rims_rl.cores.base import RecurrentCore

ENTRY_POINT_GROUP = "rims_rl.cores"

_REGISTERED: dict[str, type[RecurrentCore]] = {}  # register_core(): kept across entry-point reloads
_ENTRY_POINTS: dict[str, EntryPoint] = {}  # name -> entry point, read but not loaded
_LOADED: dict[str, type[RecurrentCore]] = {}  # entry points loaded so far
_LOADED_FROM: dict[str, EntryPoint] = {}  # and the entry point each came from
_SCANNED = False


class CoreLoadError(ValueError):
    """A plug-in core whose entry point cannot be imported (or is no core): only that name fails."""


def _checked(name: str, cls: object, where: str) -> type[RecurrentCore]:
    if not (isinstance(cls, type) and issubclass(cls, RecurrentCore)):
        raise TypeError(
            f"core {name!r} ({where}) must be a rims_rl.cores.RecurrentCore subclass, got {cls!r}"
        )
    return cls


def _scan() -> None:
    """(Re)read the group's entry points by name, importing none: a broken plug-in costs only itself."""
    global _SCANNED
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)  # the first distribution on sys.path wins, as importlib does
    for name in [n for n in found if not n.isidentifier()]:  # a name becomes paths and terminal text
        found.pop(name)
    for name in [n for n in _LOADED if _LOADED_FROM.get(n) != found.get(n)]:
        _LOADED.pop(name)  # its entry point changed or went away
    _ENTRY_POINTS.clear()
    _ENTRY_POINTS.update(found)
    _SCANNED = True


def _load(name: str) -> type[RecurrentCore]:
    """The class behind entry point ``name``, imported once; ``CoreLoadError`` names the plug-in."""
    if name not in _LOADED:
        ep = _ENTRY_POINTS[name]
        try:
            cls = _checked(name, ep.load(), f"entry point {ep.value!r}")
        except Exception as err:  # an outside package's import error or a wrong object: one line
            where = f"cannot load core {name!r} from entry point {ep.value!r}"
            raise CoreLoadError(f"{where}: {_one_line(err)}") from err
        _LOADED[name], _LOADED_FROM[name] = cls, ep
    return _LOADED[name]


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def register_core(name: str, cls: type[RecurrentCore], overwrite: bool = False) -> None:
    """Register ``cls`` as ``name`` without an entry point (the entry point is the way for packages)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"core name must be an identifier, got {name!r}")
    _checked(name, cls, "register_core")
    if not overwrite and name in core_names():
        raise ValueError(f"core {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTERED[name] = cls


def core_names() -> tuple[str, ...]:
    """Every registered core name, sorted (plug-ins by their entry-point names, none imported)."""
    if not _SCANNED:
        _scan()
    return tuple(sorted({*_ENTRY_POINTS, *_REGISTERED}))


def get_core(name: str) -> type[RecurrentCore]:
    """The core class registered as ``name``; ``ValueError`` with the closest names otherwise, and
    ``CoreLoadError`` (a ValueError) when its plug-in cannot be imported."""
    if isinstance(name, str) and name not in core_names():
        _scan()  # installed since the last scan?
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _ENTRY_POINTS:
        names = core_names()
        close = hint(name, names)
        if not names:
            close = "; no cores are registered: install rims-rl (pip install -e .) so its entry points exist"
        raise ValueError(f"unknown core {name!r}{close} (registered: {', '.join(names)})")
    return _load(name)


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
