"""Privacy plans of a run: one protocol (``PrivacyPlan``) for none, DP-SGD (constant, scheduled,
tiered), DP-FedAvg, local DP and their combinations (DESIGN §2, §4)."""

from fedpriv.defenses.plans.client_level import ClipUpdate, DPFedAvgConfig, DPFedAvgPrivacyPlan, GaussianSumNoise
from fedpriv.defenses.plans.combined import ChainedStages, CombinedPrivacyConfig, CombinedPrivacyPlan
from fedpriv.defenses.plans.example_level import (DPSGDConfig, DPSGDPrivacyPlan, TieredDPSGDConfig,
                                                  TieredDPSGDPrivacyPlan)
from fedpriv.defenses.plans.ledger import PlanLedger
from fedpriv.defenses.plans.local import LocalDPConfig, LocalDPPrivacyPlan, PrivatizeUpdate
from fedpriv.defenses.plans.no_privacy import NoPrivacy, NoPrivacyConfig
from fedpriv.defenses.plans.protocol import (WEIGHTINGS, BatchSampling, Composition, PrivacyConfig, PrivacyPlan,
                                             Refused, RoundNoise, RunShape, UpdateStage)

__all__ = [
    "BatchSampling", "ChainedStages", "ClipUpdate", "CombinedPrivacyConfig", "CombinedPrivacyPlan", "Composition",
    "DPFedAvgConfig", "DPFedAvgPrivacyPlan", "DPSGDConfig", "DPSGDPrivacyPlan", "GaussianSumNoise", "LocalDPConfig",
    "LocalDPPrivacyPlan", "NoPrivacy", "NoPrivacyConfig", "PlanLedger", "PrivacyConfig", "PrivacyPlan",
    "PrivatizeUpdate", "Refused", "RoundNoise", "RunShape", "TieredDPSGDConfig", "TieredDPSGDPrivacyPlan",
    "UpdateStage", "WEIGHTINGS",
]
