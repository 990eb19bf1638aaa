"""Attacks: an ``Observation`` (plus public knowledge) in, a ``Reconstruction`` out.

Attacks never import ``fedpriv.data`` or ``fedpriv.metrics`` (DESIGN §1).
"""

from fedpriv.attacks.analytic import invert_dense_layer, recover_dense_layer_input
from fedpriv.attacks.common import cosine_distance, squared_distance, total_variation, validate_observation
from fedpriv.attacks.inverting_gradients import AttackCompilation, InvertingGradientsConfig, invert_gradients
from fedpriv.attacks.labels import idlg_labels

__all__ = [
    "AttackCompilation", "InvertingGradientsConfig", "cosine_distance", "idlg_labels",
    "invert_dense_layer", "invert_gradients", "recover_dense_layer_input", "squared_distance",
    "total_variation", "validate_observation",
]
