"""The defense stack of a run, in its declared order: client side -> protocol -> server side.

Client side (inside each hospital, on its update before it leaves): DP-FedAvg's clip,
local DP, compression. Protocol: plaintext, secure aggregation or CKKS (the latter two
show the server only the sum). Server side: anomaly screening, a robust rule, DP-FedAvg's
noise on the sum. Model partitioning keeps each hospital's head out of the federation.
Example-level DP-SGD (plain or tiered) runs inside local training and is configured
beside the stack (``fedpriv.scenario.DPSGDSettings``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.defenses.aggregation_protocols import HomomorphicProtocol, SecureAggregationProtocol
from fedpriv.defenses.anomaly import AnomalyConfig, fit_vae_detector, screen_updates, sketch_updates
from fedpriv.defenses.compression import CompressionPlan
from fedpriv.defenses.dp_fedavg import DPFedAvgPlan
from fedpriv.defenses.local_dp import LocalDPPlan
from fedpriv.defenses.model_screening import ModelHistory, ModelScreeningConfig, record_model, screen_model
from fedpriv.defenses.robust_aggregation import RobustAggregationConfig, robust_aggregate
from fedpriv.federated.server import Aggregation
from fedpriv.privacy import _validation
from fedpriv.typing import Params

TIER_METHODS = ("scale", "sample")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPFedAvgSettings:
    """Client-level DP as the user states it; the run turns it into a ``DPFedAvgPlan``.

    Attributes:
      l2_clip_norm: clip norm of one client's update, > 0.
      noise_multiplier: fixed, or ``None`` to calibrate to ``target_epsilon`` at ``delta``.
      target_epsilon: the client-level budget, > 0.
      delta: delta, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for calibration.
      audit_trials: ``0`` or the trials per side of a white-box canary audit of one round
        (a canary client update), reported beside that round's epsilon.
    """

    l2_clip_norm: float
    noise_multiplier: float | None
    target_epsilon: float
    delta: float
    accountant: str = "rdp"
    audit_trials: int = 0

    def __post_init__(self):
        _validation.check_positive(self.l2_clip_norm, "l2_clip_norm")
        if self.noise_multiplier is not None:
            _validation.check_noise_multiplier(self.noise_multiplier)
        _validation.check_epsilon(self.target_epsilon, "target_epsilon")
        _validation.check_delta(self.delta)
        if not (isinstance(self.audit_trials, int) and (self.audit_trials == 0 or self.audit_trials >= 100)):
            raise ValueError(f"audit_trials must be 0 (no audit) or an integer >= 100, got {self.audit_trials!r}")

    def plan(self, *, client_sampling_rate: float, rounds: int, num_clients: int) -> DPFedAvgPlan:
        common = dict(l2_clip_norm=self.l2_clip_norm, client_sampling_rate=client_sampling_rate, rounds=rounds,
                      expected_clients_per_round=client_sampling_rate * num_clients)
        if self.noise_multiplier is None:
            return DPFedAvgPlan.calibrated(target_epsilon=self.target_epsilon, delta=self.delta,
                                           accountant=self.accountant, **common)
        return DPFedAvgPlan(noise_multiplier=self.noise_multiplier, **common)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TierSettings:
    """Sensitivity tiers: each tier of records gets its own budget (tiered DP-SGD).

    Attributes:
      budgets: ``{tier name: epsilon}``; every tier the cohort's records carry needs one.
      method: ``"scale"`` (per-tier clip norms) or ``"sample"`` (per-tier sampling rates).
    """

    budgets: dict
    method: str = "scale"

    def __post_init__(self):
        _validation.check_choice(self.method, "method", TIER_METHODS)
        if not self.budgets:
            raise ValueError("defense.tiers.budgets must name at least one tier with its epsilon")
        for tier, budget in self.budgets.items():
            _validation.check_epsilon(budget, f"defense.tiers.budgets[{tier!r}]")

    def check_cohort_tiers(self, tier_names: tuple[str, ...]) -> None:
        missing = [tier for tier in tier_names if tier not in self.budgets]
        if missing:
            raise ValueError(f"tiers {missing} of the cohort have no budget in defense.tiers.budgets "
                             f"(which has {sorted(self.budgets)})")


def _server_screen(config: AnomalyConfig):
    """The host-side screen of a run: z-scores from the first round; with a warm-up, a VAE
    fitted on the updates the z-scores accepted in the first ``vae_warmup_rounds`` rounds
    screens every later round too. The count-sketch key is public and fixed for the run,
    so the detector sees every round's sketches in the same coordinates."""
    projection_key = jax.random.key(0)
    benign: list[np.ndarray] = []
    detector = None

    def screen(messages, present, key):
        nonlocal detector
        report = screen_updates(messages, np.asarray(present, np.float32), projection_key, config, detector)
        if detector is None and config.vae_warmup_rounds:
            sketches = np.asarray(sketch_updates(messages, projection_key, config.projection_dim))
            benign.append(sketches[np.asarray(report.accepted, bool)])
            if len(benign) == config.vae_warmup_rounds:
                detector = fit_vae_detector(np.concatenate(benign), key)
        return report.accepted, {"rejected": len(report.reasons), "nonfinite": report.num_nonfinite,
                                 "vae": detector is not None}
    return screen


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefenseStack:
    """Every defense of a run except example-level DP-SGD (see the module docstring).

    Attributes:
      name: the preset's name, for reports.
      dp_fedavg: client-level DP, or ``None``.
      tiers: per-tier budgets for tiered DP-SGD (needs ``defense`` DP-SGD settings), or ``None``.
      local_dp: update-level local DP on each client's message, or ``None``.
      compression: compression of each client's message, or ``None``.
      protocol: ``None`` (plaintext), secure aggregation or CKKS.
      screening: server-side anomaly screen, or ``None``.
      robust_aggregation: a robust rule replacing the mean, or ``None``.
      private_head: model partitioning (each hospital keeps its head).
      audit_ledger: every hospital signs a hash-chained record of each round's release
        (needs DP-SGD or DP-FedAvg, whose parameters the records state).
      model_screening: each hospital screens the model it receives (duplicated units,
        outlying unit norms, abrupt changes) and refuses to train on a crafted one.
    """

    name: str = "none"
    dp_fedavg: DPFedAvgSettings | None = None
    tiers: TierSettings | None = None
    local_dp: LocalDPPlan | None = None
    compression: CompressionPlan | None = None
    protocol: SecureAggregationProtocol | HomomorphicProtocol | None = None
    screening: AnomalyConfig | None = None
    robust_aggregation: RobustAggregationConfig | None = None
    private_head: bool = False
    audit_ledger: bool = False
    model_screening: ModelScreeningConfig | None = None

    def __post_init__(self):
        if self.protocol is not None and (self.screening is not None or self.robust_aggregation is not None):
            raise ValueError(f"defense.protocol {self.protocol.name!r} shows the server only the sum: "
                             "defense.screening and defense.robust_aggregation need per-client updates")
        if self.dp_fedavg is not None and self.robust_aggregation is not None:
            raise ValueError("defense.robust_aggregation cannot replace DP-FedAvg's noised sum; use one of them")

    def client_transform(self):
        """``make(key) -> optax transform`` for each client's update, or ``None``.

        Local DP first (clip + noise), then compression: compressing a privatised message
        is post-processing, so the local DP guarantee survives it.
        """
        stages = [stage for stage in (self.local_dp, self.compression) if stage is not None]
        if not stages:
            return None

        def make(key):
            keys = jax.random.split(key, len(stages))
            return optax.chain(*(stage.transform(k) for stage, k in zip(stages, keys)))
        return make

    def aggregation(self, *, weighting: str, dp_fedavg_plan: DPFedAvgPlan | None) -> Aggregation:
        """The federated ``Aggregation`` of this stack (secure protocols sum uniformly)."""
        screen = robust_rule = None
        if self.screening is not None:
            screen = _server_screen(self.screening)
        if self.robust_aggregation is not None:
            config_rule = self.robust_aggregation

            def robust_rule(messages, weights):
                return robust_aggregate(messages, (weights > 0).astype(jnp.float32), config_rule)
        # Example counts would exceed a fixed-point clip range: under a secure protocol
        # every client's message counts once.
        return Aggregation(weighting="uniform" if self.protocol is not None else weighting,
                           dp_fedavg=dp_fedavg_plan, protocol=self.protocol, screen=screen, robust_rule=robust_rule)

    def model_screen(self, num_clients: int):
        """``(accept_model, refusals)`` for ``train``: every hospital keeps its own history of
        accepted models; ``refusals`` collects ``(round, client, reasons)``. ``(None, [])``
        without screening."""
        if self.model_screening is None:
            return None, []
        histories = [ModelHistory() for _ in range(num_clients)]
        refusals: list[tuple[int, int, tuple[str, ...]]] = []
        config = self.model_screening

        def accept_model(round_index, participating, params):
            host_params = jax.device_get(params)
            accepted = np.zeros(num_clients, bool)
            for client in np.flatnonzero(participating):
                report = screen_model(host_params, histories[client], config)
                if report.accepted:
                    histories[client] = record_model(histories[client], host_params)
                    accepted[client] = True
                else:
                    refusals.append((round_index, int(client), report.reasons))
            return accepted
        return accept_model, refusals

    def message_bytes(self, params: Params) -> float:
        """Bytes one client's message takes before the protocol: compressed or float32."""
        if self.compression is not None:
            return float(self.compression.compressed_bytes(params))
        return float(sum(4 * np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
