"""Defenses (DESIGN §4): DP plans, local DP, compression, secure protocols, screening.

DP is composed in one place per mechanism: :class:`DPSGDPlan` (example level),
:class:`TieredDPSGDPlan` (example level, a budget per sensitivity tier),
:class:`DPFedAvgPlan` (client level) and :class:`LocalDPPlan` (each client's message).
The clipping and noise building blocks are public for plans and tests, not for computing
noise stddevs by hand. The privacy plan of a run (``fedpriv.defenses.plans``) couples a
mechanism to the round; the server's stages are ``fedpriv.defenses.server_stages``; how a
run stacks them is ``fedpriv.federated.defense_stack``.
"""

from fedpriv.defenses.aggregation_protocols import HomomorphicProtocol, SecureAggregationProtocol
from fedpriv.defenses.anomaly import AnomalyConfig, ScreeningReport, fit_vae_detector, screen_updates
from fedpriv.defenses.audit_log import AuditEntry, AuditLog, verify_audit_log
from fedpriv.defenses.clipping import clip_per_example, clipped_sum, per_example_global_norms, per_example_gradients
from fedpriv.defenses.compression import CompressionPlan
from fedpriv.defenses.dp_fedavg import DPFedAvgPlan
from fedpriv.defenses.dp_sgd import DPSGDPlan
from fedpriv.defenses.homomorphic import CKKSConfig, encrypted_sum
from fedpriv.defenses.local_dp import LocalDPPlan
from fedpriv.defenses.model_screening import ModelScreeningConfig, screen_model
from fedpriv.defenses.noise import GaussianNoiseState, add_gaussian_noise
from fedpriv.defenses.robust_aggregation import RobustAggregationConfig, robust_aggregate
from fedpriv.defenses.secure_aggregation import SecureAggregationConfig, SecureAggregationError, secure_sum
from fedpriv.defenses.tiered_dp_sgd import TieredDPSGDPlan

__all__ = [
    "AnomalyConfig", "AuditEntry", "AuditLog", "CKKSConfig", "CompressionPlan", "DPFedAvgPlan", "DPSGDPlan",
    "GaussianNoiseState", "HomomorphicProtocol", "LocalDPPlan", "ModelScreeningConfig", "RobustAggregationConfig",
    "ScreeningReport", "SecureAggregationConfig", "SecureAggregationError", "SecureAggregationProtocol",
    "TieredDPSGDPlan", "add_gaussian_noise", "clip_per_example", "clipped_sum", "encrypted_sum", "fit_vae_detector",
    "per_example_global_norms", "per_example_gradients", "robust_aggregate", "screen_model", "screen_updates",
    "secure_sum", "verify_audit_log",
]
