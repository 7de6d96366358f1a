"""Recurrent cores: the contract (``base``), the registry (``registry``, entry-point group
``rims_rl.cores``) and one module per core (``rims``, ``lstm``, ``gru``, ``tlb``, ``assembly``).

``docs/cores.md`` shows how to add a core from an outside package.
"""

from rims_rl.checks import check_positive
from rims_rl.cores.base import RecurrentCore, State
from rims_rl.cores.registry import ENTRY_POINT_GROUP, core_names, core_settings, get_core, register_core

__all__ = [
    "ENTRY_POINT_GROUP",
    "RecurrentCore",
    "State",
    "check_positive",
    "core_names",
    "core_settings",
    "get_core",
    "register_core",
]
