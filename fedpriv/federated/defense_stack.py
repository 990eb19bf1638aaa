"""The defenses of a run besides its privacy plan, and how they join it, in one declared order:
client side -> protocol -> server side.

Client side (inside each hospital, on its update before it leaves): compression, placed
by the privacy plan where it keeps the plan's guarantee. Protocol: plaintext, secure
aggregation or CKKS (the latter two show the server only the sum). Server side: anomaly
screening, a robust rule or the plan's noise on the sum. Model partitioning keeps each
hospital's head out of the federation; client-side model screening lets hospitals refuse
a crafted model; the signed audit log attests each round's DP release. The privacy plan
(``fedpriv.defenses.plans``) is built beside the stack and checks, before any compute,
that it composes with it (:meth:`DefenseStack.composition`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fedpriv.defenses.aggregation_protocols import HomomorphicProtocol, SecureAggregationProtocol
from fedpriv.defenses.anomaly import AnomalyConfig
from fedpriv.defenses.compression import CompressionPlan
from fedpriv.defenses.model_screening import ModelHistory, ModelScreeningConfig, record_model, screen_model
from fedpriv.defenses.plans import Composition, PrivacyPlan
from fedpriv.defenses.robust_aggregation import RobustAggregationConfig
from fedpriv.defenses.server_stages import (AnomalyScreening, PlaintextSum, ProtocolSum, RobustRule, ServerPipeline,
                                            WeightedMean)
from fedpriv.federated.training import FederatedConfig
from fedpriv.typing import Params


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefenseStack:
    """Every defense of a run except its privacy plan (see the module docstring).

    Attributes:
      name: the preset's name, for reports.
      compression: compression of each client's message, or ``None``.
      protocol: ``None`` (plaintext), secure aggregation or CKKS.
      screening: server-side anomaly screen, or ``None``.
      robust_aggregation: a robust rule replacing the mean, or ``None``.
      private_head: model partitioning (each hospital keeps its head).
      audit_log: every hospital signs a hash-chained record of each round's DP release.
      model_screening: each hospital screens the model it receives (duplicated units,
        outlying unit norms, abrupt changes) and refuses to train on a crafted one.
    """

    name: str = "none"
    compression: CompressionPlan | None = None
    protocol: SecureAggregationProtocol | HomomorphicProtocol | None = None
    screening: AnomalyConfig | None = None
    robust_aggregation: RobustAggregationConfig | None = None
    private_head: bool = False
    audit_log: bool = False
    model_screening: ModelScreeningConfig | None = None

    def __post_init__(self):
        self.pipeline(server_noise=None)  # a per-client stage behind a secure protocol fails here, before compute

    def composition(self, federation: FederatedConfig, *, stop_on_budget: bool) -> Composition:
        """What the run composes around its privacy plan (the plan refuses what it cannot hold)."""
        if federation.client_sampling_rate is not None:
            selection = "poisson"
        else:
            selection = "all" if federation.clients_per_round is None else "fixed_size"
        stages = tuple(name for name, part in (("screening", self.screening),
                                               ("robust_aggregation", self.robust_aggregation)) if part is not None)
        return Composition(server_stages=stages, protocol="plaintext" if self.protocol is None else self.protocol.name,
                           weighting=federation.weighting, client_selection=selection, stop_on_budget=stop_on_budget,
                           audit_log=self.audit_log)

    def pipeline(self, server_noise=None) -> ServerPipeline:
        """The server stages: screening, the protocol, then the plan's server noise, a robust
        rule or the weighted mean."""
        if server_noise is not None and self.robust_aggregation is not None:
            raise ValueError("defense.robust_aggregation cannot replace the privacy plan's noised sum; use one of them")
        aggregator = (server_noise if server_noise is not None
                      else RobustRule(config=self.robust_aggregation) if self.robust_aggregation is not None
                      else WeightedMean())
        return ServerPipeline(
            screens=() if self.screening is None else (AnomalyScreening(config=self.screening),),
            protocol=PlaintextSum() if self.protocol is None else ProtocolSum(protocol=self.protocol),
            aggregator=aggregator)

    def client_stages(self, plan: PrivacyPlan) -> tuple:
        """The hospitals' transforms of their updates: the plan's, with compression where it places it."""
        return plan.client_update_stages(self.compression)

    def message_bytes(self, params: Params) -> float:
        """Bytes one client's message takes before the protocol: compressed or float32."""
        if self.compression is not None:
            return float(self.compression.compressed_bytes(params))
        return float(sum(4 * np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass
class HospitalModelScreens:
    """Client-side model screening: every hospital keeps its own history of accepted models.

    ``refusals`` collects ``(round, client, reasons)`` of every refused model.
    """

    config: ModelScreeningConfig
    num_clients: int
    refusals: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.histories = [ModelHistory() for _ in range(self.num_clients)]

    def checkpoint_state(self) -> dict:
        """Every hospital's history and the refusals so far (``fedpriv.federated.checkpoints.HostParty``)."""
        return {"histories": list(self.histories), "refusals": list(self.refusals)}

    def restore_state(self, state) -> None:
        """Puts back a :meth:`checkpoint_state`: the screens judge the next model as they would have."""
        if len(state["histories"]) != self.num_clients:
            raise ValueError(f"the checkpointed model screens are {len(state['histories'])} hospitals', this run "
                             f"has {self.num_clients}")
        self.histories, self.refusals = list(state["histories"]), list(state["refusals"])

    def accepts(self, round_index: int, participating: np.ndarray, params: Params) -> np.ndarray:
        host_params = jax.device_get(params)
        accepted = np.zeros(self.num_clients, bool)
        for client in np.flatnonzero(participating):
            report = screen_model(host_params, self.histories[client], self.config)
            if report.accepted:
                self.histories[client] = record_model(self.histories[client], host_params)
                accepted[client] = True
            else:
                self.refusals.append((round_index, int(client), report.reasons))
        return accepted
