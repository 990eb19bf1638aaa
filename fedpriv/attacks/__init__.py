"""Attacks: an ``Observation`` (plus public knowledge) in, a reconstruction (images, codes, notes) out.

Every reconstruction attack follows one protocol (``protocol.py``): ``config.make(model,
public) -> Attack``, then ``attack(observation, key, *, victims, side_knowledge)``.

Attacks never import ``fedpriv.data`` or ``fedpriv.metrics`` (DESIGN §1).
"""

from fedpriv.attacks.analytic import (DenseLayerCandidates, dense_layer_candidates, invert_dense_layer,
                                      invert_dense_layer_batch, recover_dense_layer_input)
from fedpriv.attacks.cocktail_party import CocktailPartyConfig, fast_ica, input_dense_layer, recover_by_ica
from fedpriv.attacks.code_recovery import CodeRecoveryConfig, recover_codes
from fedpriv.attacks.codes import (CodeRecovery, code_counts, code_set, frozen_embedding_codes, noisy_code_set,
                                   refine_with_ontology)
from fedpriv.attacks.common import cosine_distance, squared_distance, total_variation, validate_observation
from fedpriv.attacks.consistency import (ConsistencyRule, PublicCooccurrence, ReconstructedRecord, Verification,
                                         default_rules, record_from_tokens, verify)
from fedpriv.attacks.dager import DagerConfig, input_span, recover_notes
from fedpriv.attacks.dlg import DLGConfig, deep_leakage
from fedpriv.attacks.fishing import FishingConfig, make_fishing_model, recover_fished_record
from fedpriv.attacks.generative_prior import GenerativePriorConfig, invert_with_prior
from fedpriv.attacks.image_prior import ImagePrior, ImagePriorConfig, train_image_prior
from fedpriv.attacks.imprint import ImprintConfig, make_imprint_model, recover_from_imprint
from fedpriv.attacks.inverting_gradients import (AttackCompilation, InvertingGradientsConfig, invert_gradients,
                                                 make_gradient_matching_objective)
from fedpriv.attacks.labels import idlg_labels, ilrg_label_counts, labels_from_counts, llg_label_counts
from fedpriv.attacks.membership import (LiraConfig, LiraResult, ShadowModels, client_membership_scores,
                                        lira_attack, lira_scores, loss_threshold_scores, train_shadow_models)
from fedpriv.attacks.probing import ProbingConfig, class_confidence, class_prototypes, prototype_start
from fedpriv.attacks.protocol import (ATTACK_KINDS, Attack, AttackConfig, CodeRecoveryResult, PublicKnowledge,
                                      SideKnowledge, TokenRecoveryResult)
from fedpriv.attacks.shadow_models import (ShadowTrainingConfig, balanced_inclusion_masks, logit_confidence,
                                           logit_confidences, poisson_sample_masks, train_model, train_models)
from fedpriv.attacks.tableak import TabLeakConfig, TableLayout, TabularRecoveryResult, tableak
from fedpriv.attacks.tokens import TokenRecoveryConfig, recover_tokens, token_bag

__all__ = [
    "ATTACK_KINDS", "Attack", "AttackCompilation", "AttackConfig", "CocktailPartyConfig", "CodeRecovery",
    "CodeRecoveryConfig", "CodeRecoveryResult", "ConsistencyRule", "DLGConfig", "DagerConfig", "DenseLayerCandidates",
    "FishingConfig", "GenerativePriorConfig", "ImagePrior", "ImagePriorConfig", "ImprintConfig",
    "InvertingGradientsConfig", "LiraConfig", "LiraResult", "ProbingConfig", "PublicCooccurrence", "PublicKnowledge",
    "ReconstructedRecord", "ShadowModels", "ShadowTrainingConfig", "SideKnowledge", "TabLeakConfig", "TableLayout",
    "TabularRecoveryResult", "TokenRecoveryConfig", "TokenRecoveryResult", "Verification", "balanced_inclusion_masks",
    "class_confidence", "class_prototypes", "client_membership_scores", "code_counts", "code_set", "cosine_distance",
    "deep_leakage", "default_rules", "dense_layer_candidates", "fast_ica", "frozen_embedding_codes", "idlg_labels",
    "ilrg_label_counts", "input_dense_layer", "input_span", "invert_dense_layer", "invert_dense_layer_batch",
    "invert_gradients", "invert_with_prior", "labels_from_counts", "lira_attack", "lira_scores", "llg_label_counts",
    "logit_confidence", "logit_confidences", "loss_threshold_scores", "make_fishing_model",
    "make_gradient_matching_objective", "make_imprint_model", "noisy_code_set", "poisson_sample_masks",
    "prototype_start", "record_from_tokens", "recover_by_ica", "recover_codes", "recover_dense_layer_input",
    "recover_fished_record", "recover_from_imprint", "recover_notes", "recover_tokens", "refine_with_ontology",
    "squared_distance", "tableak", "token_bag", "total_variation", "train_image_prior", "train_model", "train_models",
    "train_shadow_models", "validate_observation", "verify",
]
