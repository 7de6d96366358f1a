"""rims-rl: Recurrent Independent Mechanisms as a drop-in recurrent core for RL."""

from rims_rl.core import RIMs

__all__ = ["RIMs"]
__version__ = "0.1.0"
