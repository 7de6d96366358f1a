"""rims-rl: Recurrent Independent Mechanisms (and other modular recurrent cores) as drop-in recurrent
cores for RL.

Importing the package registers the policy names ``MlpRimsPolicy``, ``CnnRimsPolicy``,
``MultiInputRimsPolicy`` and ``SpatialCnnRimsPolicy`` with sb3-contrib's ``RecurrentPPO`` (so RL Zoo's
``--gym-packages rims_rl`` finds them).
"""

from rims_rl.cores.rims import RIMs
from rims_rl.policies import CnnRimsPolicy, MlpRimsPolicy, MultiInputRimsPolicy
from rims_rl.spatial import SpatialCnnRimsPolicy

__all__ = ["CnnRimsPolicy", "MlpRimsPolicy", "MultiInputRimsPolicy", "RIMs", "SpatialCnnRimsPolicy"]
__version__ = "0.1.0"
