"""Client-side defenses (DESIGN §4): clipping, noise, and the DP plans that compose them.

DP-SGD is composed in one place, :class:`DPSGDPlan`; the clipping and noise building
blocks are public for plans and tests, not for computing noise stddevs by hand.
"""

from fedpriv.defenses.clipping import clip_per_example
from fedpriv.defenses.clipping import clipped_sum
from fedpriv.defenses.clipping import per_example_global_norms
from fedpriv.defenses.clipping import per_example_gradients
from fedpriv.defenses.dp_sgd import DPSGDPlan
from fedpriv.defenses.noise import GaussianNoiseState
from fedpriv.defenses.noise import add_gaussian_noise

__all__ = [
    "DPSGDPlan",
    "GaussianNoiseState",
    "add_gaussian_noise",
    "clip_per_example",
    "clipped_sum",
    "per_example_global_norms",
    "per_example_gradients",
]
