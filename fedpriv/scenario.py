"""One threat scenario end to end: train → observe → attack → measure (DESIGN §3).

The scenario is the only place that holds both the attacker's view and the ground
truth: attacks get an ``Observation`` (and, for ``label_strategy="known"``, the labels as
declared side knowledge); ``fedpriv.metrics`` scores the result against the records.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from fedpriv import data as data_lib
from fedpriv.attacks import AttackCompilation, LiraConfig
from fedpriv.attacks.image_prior import ImagePriorConfig
from fedpriv.attacks.protocol import check_attack_config
from fedpriv.defenses.plans import NoPrivacyConfig, PrivacyConfig
from fedpriv.federated import FederatedConfig
from fedpriv.federated.checkpoints import CheckpointConfig
from fedpriv.federated.defense_stack import DefenseStack
from fedpriv.keys import run_keys
from fedpriv.privacy import _validation
from fedpriv.privacy.accountant import ACCOUNTANTS
from fedpriv.scenario_attacks import ATTACK_KIND_OF_COHORT, VictimLeak, attack_stage, prepare_attack
from fedpriv.scenario_federation import build_cohorts, build_model, make_plan, save_membership_coins, train_federation
from fedpriv.scenario_measurements import defense_costs, membership_metrics, privacy_metrics, training_metrics
from fedpriv.typing import Model

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyOptions:
    """How the run states, enforces and checks its privacy (the ``privacy`` group besides the plan).

    Attributes:
      delta: the delta epsilons are stated at, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for stop-on-budget and the audit log.
      stop_on_budget: a privacy ledger stops training before the round that would take the
        run above the plan's budget.
      audit_trials: ``0`` (no audit) or the trials per side of a white-box canary audit of
        one release of the plan at its weakest round (``>= 100``).
      secure_randomness: draw DP noise and sampling from OS entropy (the deployable mode)
        instead of the run seed (a reproducible simulation; see ``fedpriv.keys``).
    """

    delta: float = 1e-5
    accountant: str = "rdp"
    stop_on_budget: bool = False
    audit_trials: int = 0
    secure_randomness: bool = False

    def __post_init__(self):
        _validation.check_delta(self.delta, "privacy.delta")
        _validation.check_choice(self.accountant, "privacy.accountant", ACCOUNTANTS)
        if not (isinstance(self.audit_trials, int) and (self.audit_trials == 0 or self.audit_trials >= 100)):
            raise ValueError(f"privacy.audit_trials must be 0 (no audit) or an integer >= 100, "
                             f"got {self.audit_trials!r}")
        for name in ("stop_on_budget", "secure_randomness"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"privacy.{name} must be true or false, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """Everything one run needs, as typed objects (built from YAML by experiments/build.py).

    Attributes:
      seed: the run seed; split into named key streams.
      output_dir: the run's folder, for artifacts the scenario writes itself (the audit
        log, the membership coins); ``None``: none.
      cohort: where the records come from.
      test_fraction: held-out share of the cohort for test accuracy, in (0, 1).
      partition: how records are split into hospitals.
      model_factory: ``model_factory(input_shape=..., num_classes=...) -> Model``.
      federation: the federated protocol.
      privacy: the privacy config (``fedpriv.defenses.plans``): ``NoPrivacyConfig``, DP-SGD
        (plain, scheduled, tiered), DP-FedAvg, local DP or a combination.
      privacy_options: delta, accountant, stop-on-budget, canary audit, randomness.
      defenses: the rest of the defense stack (compression, secure protocols, screening,
        robust rules, partitioning, audit log, model screening).
      attack: an attack config (``fedpriv.attacks.protocol.AttackConfig``), or ``None``.
      attack_compilation: how the attack is compiled.
      attack_prior: the image prior a generative-prior attack trains on public images.
      public_records: how many public images the attacker holds (the prior's training
        set, the imprint's bin quantiles): phantoms of other patients, never the cohort's.
      observe_round: the round the attacker records; negative counts from the end.
      num_victims: how many observed hospitals are attacked.
      membership: ``None`` or a LiRA config: membership inference against the final
        federated model on hospital 0's records, half of which (by fair coins) were held
        out of training (``fedpriv.scenario_federation.MembershipSplit``).
      checkpoint: ``None`` (no checkpoints) or when and where training writes round
        checkpoints; a run started again with the same config resumes from the newest.
    """

    seed: int
    output_dir: str | None = None
    cohort: data_lib.CohortSource
    test_fraction: float
    partition: data_lib.PartitionConfig
    model_factory: Callable[..., Model]
    federation: FederatedConfig
    privacy: PrivacyConfig = NoPrivacyConfig()
    privacy_options: PrivacyOptions = PrivacyOptions()
    defenses: DefenseStack = DefenseStack()
    attack: object | None
    attack_compilation: AttackCompilation = AttackCompilation()
    attack_prior: ImagePriorConfig | None = None
    public_records: int = 512
    observe_round: int = -1
    num_victims: int = 1
    membership: LiraConfig | None = None
    checkpoint: CheckpointConfig | None = None

    def __post_init__(self):
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if not -self.federation.rounds <= self.observe_round < self.federation.rounds:
            raise ValueError(f"observe_round must be in [-{self.federation.rounds}, {self.federation.rounds}), "
                             f"got {self.observe_round!r}")
        if not (isinstance(self.num_victims, int) and self.num_victims >= 0):
            raise ValueError(f"num_victims must be an integer >= 0, got {self.num_victims!r}")
        if self.attack is not None and self.num_victims < 1:
            raise ValueError("num_victims must be >= 1 when an attack is configured")
        if self.attack is not None:
            check_attack_config(self.attack)
            fits = ATTACK_KIND_OF_COHORT.get(self.cohort.kind, "images")
            if self.attack.kind != fits:
                raise ValueError(f"attack {type(self.attack).__name__} recovers {self.attack.kind}, which does not "
                                 f"fit data.cohort.kind {self.cohort.kind!r}: use an attack of kind {fits!r}")
        if self.cohort.kind in data_lib.TABULAR_COHORT_KINDS and self.partition.scheme == "by_site":
            raise ValueError("data.partition.scheme 'by_site' shifts images by scanner site and a table has none: "
                             "use iid, dirichlet or quantity_skew for data.cohort.kind "
                             f"{self.cohort.kind!r}")
        if (self.attack_prior is None) != (not getattr(self.attack, "uses_prior", False)):
            raise ValueError("attack.prior must be set exactly when the attack is a generative-prior inversion")
        # iDLG reads one label off the head update: caught here, not after the whole training run.
        if (self.attack is not None and getattr(self.attack, "label_strategy", None) == "idlg"
                and self.federation.local_steps * self.federation.batch_size != 1):
            raise ValueError("attack label_strategy 'idlg' needs one local step of batch 1, got local_steps="
                             f"{self.federation.local_steps}, batch_size={self.federation.batch_size}; "
                             "use label_strategy 'known' (attack.config.label_strategy=known) or no attack")
        if self.defenses.audit_log and self.output_dir is None:
            raise ValueError("defense.audit_log writes the log into the run folder: give the scenario an output_dir")
        if self.checkpoint is not None and self.checkpoint.directory is None and self.output_dir is None:
            raise ValueError("checkpoint.dir is null and the scenario has no output_dir to put checkpoints in: "
                             "set checkpoint.dir or give the scenario an output_dir")
        if self.checkpoint is not None and self.privacy_options.secure_randomness:
            raise ValueError("checkpoint.every with privacy.secure_randomness=true would write the stages' noise keys, "
                             "drawn from OS entropy, to disk; use checkpoint.every=null or seed-derived randomness")
        if (self.attack is not None and self.defenses.private_head
                and getattr(self.attack, "label_strategy", None) == "idlg"):
            raise ValueError("attack label_strategy 'idlg' reads labels off the head, which model partitioning "
                             "keeps private; use label_strategy 'known'")


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
    """Flat metrics plus the leak to show: ``truth`` and ``reconstructed`` are
    ``[V, K, H, W, C]`` image pairs per victim (K the records of each victim); ``leaks``
    each victim's true and recovered codes or notes."""

    metrics: dict[str, float | int | str]
    truth: np.ndarray | None
    reconstructed: np.ndarray | None
    leaks: tuple[VictimLeak, ...] = ()


def run_scenario(config: ScenarioConfig) -> ScenarioResult:
    """Runs one scenario in named stages and returns its metrics (see ``ScenarioResult``).

    Build the federation (cohorts, model, the privacy plan checked against the stack) ->
    train -> observe and attack -> measure privacy -> measure membership. Every config
    error surfaces in the build stage, before any compute.
    """
    started = time.perf_counter()
    keys = run_keys(config.seed, secure_randomness=config.privacy_options.secure_randomness)
    cohorts = build_cohorts(config, keys)
    model = build_model(config, cohorts)
    plan = make_plan(config, cohorts)
    threat = prepare_attack(config, model, cohorts, keys)  # the malicious server may craft the model it sends
    observe_round = config.observe_round % config.federation.rounds
    trained = train_federation(config, cohorts, threat.model, plan, keys,
                               observe_rounds=[observe_round] if config.attack is not None else [])
    results = training_metrics(trained, cohorts, threat.model)
    results.update(defense_costs(config.defenses, trained))
    results.update(privacy_metrics(plan, trained, config.privacy_options, jax.random.fold_in(keys.attack, 1)))
    scored = attack_stage(config, threat, trained, plan, cohorts, observe_round, keys)
    results.update(scored.metrics)
    if config.membership is not None:
        results.update(membership_metrics(config.membership, threat.model, trained.training.params, cohorts,
                                          jax.random.fold_in(keys.attack, 2), delta=config.privacy_options.delta,
                                          accountant_epsilon=float(results.get("privacy.epsilon", float("inf")))))
        if config.output_dir is not None:
            save_membership_coins(Path(config.output_dir) / "membership_coins.json", cohorts.membership)
    results["scenario.seconds"] = time.perf_counter() - started
    return ScenarioResult(results, scored.truth, scored.reconstructed, scored.leaks)
