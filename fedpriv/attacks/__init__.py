"""Attacks: an ``Observation`` (plus public knowledge) in, a ``Reconstruction`` out.

Attacks never import ``fedpriv.data`` or ``fedpriv.metrics`` (DESIGN §1).
"""

from fedpriv.attacks.analytic import invert_dense_layer, recover_dense_layer_input
from fedpriv.attacks.common import cosine_distance, squared_distance, total_variation, validate_observation
from fedpriv.attacks.inverting_gradients import AttackCompilation, InvertingGradientsConfig, invert_gradients
from fedpriv.attacks.labels import idlg_labels
from fedpriv.attacks.membership import (LiraConfig, LiraResult, ShadowModels, client_membership_scores,
                                        lira_attack, lira_scores, loss_threshold_scores, train_shadow_models)
from fedpriv.attacks.shadow_models import (ShadowTrainingConfig, balanced_inclusion_masks, logit_confidence,
                                           logit_confidences, poisson_sample_masks, train_model, train_models)

__all__ = [
    "AttackCompilation", "InvertingGradientsConfig", "LiraConfig", "LiraResult", "ShadowModels",
    "ShadowTrainingConfig", "balanced_inclusion_masks", "client_membership_scores", "cosine_distance",
    "idlg_labels", "invert_dense_layer", "invert_gradients", "lira_attack", "lira_scores", "logit_confidence",
    "logit_confidences", "loss_threshold_scores", "poisson_sample_masks", "recover_dense_layer_input",
    "squared_distance", "total_variation", "train_model", "train_models", "train_shadow_models",
    "validate_observation",
]
