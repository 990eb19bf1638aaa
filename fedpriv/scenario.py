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
import jax.numpy as jnp
import numpy as np

from fedpriv import data as data_lib
from fedpriv import metrics
from fedpriv import privacy
from fedpriv.attacks import AttackCompilation, LiraConfig
from fedpriv.attacks.codes import update_noise_stddev
from fedpriv.attacks.image_prior import ImagePriorConfig, train_image_prior
from fedpriv.attacks.analytic import AnalyticConfig
from fedpriv.attacks.code_recovery import CodeRecoveryConfig
from fedpriv.attacks.generative_prior import GenerativePriorConfig
from fedpriv.attacks.imprint import ImprintConfig, make_imprint_model
from fedpriv.attacks.tokens import TokenRecoveryConfig
from fedpriv.data.records import TokenRecords, partition_records
from fedpriv.defenses import DPSGDPlan
from fedpriv.defenses.ledger_recorder import LedgerRecorder
from fedpriv.federated.defense_stack import DefenseStack
from fedpriv.defenses.tiered_dp_sgd import TieredDPSGDPlan
from fedpriv.federated import FederatedConfig, train
from fedpriv.keys import numpy_generator, run_keys
from fedpriv.models.base import check_input_shape
from fedpriv.scenario_attacks import ATTACK_CONFIGS, IMAGE_ATTACKS, merge_participants, run_attack
from fedpriv.scenario_measurements import audit_one_step, defense_costs, membership_inference
from fedpriv.typing import ClientData, Model

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "pld")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPSGDSettings:
    """DP-SGD as the user states it; the scenario turns it into a ``DPSGDPlan``.

    The sampling rate and step count follow from the data and the protocol: every
    local step samples each of a hospital's records with probability
    ``batch_size / mean hospital size``, and a record's hospital runs
    ``rounds * local_steps`` steps (participation in every round is assumed, which
    ignores amplification by client sampling and so over-states epsilon, never under).

    Attributes:
      l2_clip_norm: per-example clip norm, > 0.
      noise_multiplier: fixed noise multiplier, or ``None`` to calibrate it to
        ``target_epsilon`` at ``delta`` with ``accountant``.
      target_epsilon: the budget for calibration, > 0.
      delta: delta, in (0, 1).
      accountant: ``"rdp"`` or ``"pld"`` for calibration (reports give both).
      schedule: ``{"kind": ..., **options}`` of a noise schedule
        (``fedpriv.privacy.make_schedule``): ``"constant"`` uses ``noise_multiplier`` (or
        calibrates it); ``"budget_aware"`` scales its ``profile`` so the planned run spends
        ``target_epsilon``; the other kinds give their own multipliers and the accountant
        composes what they spend.
      stop_on_budget: stop training before the round that would take the run above
        ``target_epsilon`` (a privacy ledger checks before every round).
      audit_trials: ``0`` (no audit) or the trials per side of a white-box gradient-canary
        audit of one DP-SGD step of the plan at its smallest noise multiplier (q = 1),
        reported beside that step's accountant epsilon (Clopper-Pearson, split threshold).
    """

    l2_clip_norm: float
    noise_multiplier: float | None
    target_epsilon: float
    delta: float
    accountant: str = "rdp"
    schedule: dict = dataclasses.field(default_factory=lambda: {"kind": "constant"})
    stop_on_budget: bool = False
    audit_trials: int = 0

    def __post_init__(self):
        if not self.l2_clip_norm > 0:
            raise ValueError(f"l2_clip_norm must be > 0, got {self.l2_clip_norm!r}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0 or None (calibrate), got {self.noise_multiplier!r}")
        if not self.target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0, got {self.target_epsilon!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not (isinstance(self.audit_trials, int) and (self.audit_trials == 0 or self.audit_trials >= 100)):
            raise ValueError(f"audit_trials must be 0 (no audit) or an integer >= 100, got {self.audit_trials!r}")
        kind = dict(self.schedule).get("kind")
        if kind not in privacy.SCHEDULE_KINDS:
            raise ValueError(f"privacy.schedule.kind must be one of {privacy.SCHEDULE_KINDS}, got {kind!r}")
        if kind not in ("constant", "budget_aware"):
            # Built now so a bad option or a schedule going negative fails before any compute.
            privacy.make_schedule(kind, **{k: v for k, v in self.schedule.items() if k != "kind"})

    def plan(self, *, sampling_rate: float, rounds: int, steps_per_round: int,
             expected_batch_size: float) -> DPSGDPlan:
        """The DP-SGD plan of a run of ``rounds`` rounds of ``steps_per_round`` steps each."""
        common = dict(l2_clip_norm=self.l2_clip_norm, sampling_rate=sampling_rate, steps=rounds * steps_per_round,
                      expected_batch_size=expected_batch_size)
        options = {k: v for k, v in self.schedule.items() if k != "kind"}
        kind = self.schedule["kind"]
        if kind == "constant":
            if self.noise_multiplier is None:
                return DPSGDPlan.calibrated(target_epsilon=self.target_epsilon, delta=self.delta,
                                            accountant=self.accountant, **common)
            return DPSGDPlan(noise_multiplier=self.noise_multiplier, **common)
        if kind == "budget_aware":
            profile = options.pop("profile", None)
            schedule = privacy.BudgetAwareSchedule(
                target_epsilon=self.target_epsilon, delta=self.delta, rounds=rounds, sampling_rate=sampling_rate,
                steps_per_round=steps_per_round, accountant=self.accountant,
                **({"profile": privacy.make_schedule(**profile)} if profile else {}), **options)
        else:
            schedule = privacy.make_schedule(kind, **options)
        sequence = schedule.sequence(rounds)
        return DPSGDPlan(noise_multiplier=sequence[0], round_noise_multipliers=sequence, **common)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """Everything one run needs, as typed objects (built from YAML by experiments/build.py).

    Attributes:
      seed: the run seed; split into named key streams.
      output_dir: the run's folder, for the audit ledger (``None``: no artifacts).
      cohort: where the images come from.
      test_fraction: held-out share of the cohort for test accuracy, in (0, 1).
      partition: how records are split into hospitals.
      model_factory: ``model_factory(input_shape=..., num_classes=...) -> Model``.
      federation: the federated protocol.
      dp: DP-SGD settings, or ``None`` for no example-level DP.
      defenses: the rest of the defense stack (DP-FedAvg, tiers, local DP, compression,
        secure protocols, screening, robust rules, partitioning).
      delta: delta at which epsilon is reported.
      attack: the attack (one of ``fedpriv.scenario_attacks.ATTACK_CONFIGS``), or ``None``.
      attack_compilation: how the attack is compiled.
      attack_prior: the image prior a generative-prior attack trains on public images.
      public_records: how many public images the attacker holds (the prior's training
        set, the imprint's bin quantiles): phantoms of other patients, never the cohort's.
      observe_round: the round the attacker records; negative counts from the end.
      num_victims: how many observed hospitals are attacked.
      membership: ``None`` or a LiRA config: membership inference against the final
        federated model, for the records of hospital 0 (members) against as many
        held-out test records (non-members). The shadows are trained centrally with
        ``membership.training``, the attacker's approximation of the federation.
    """

    seed: int
    output_dir: str | None = None
    cohort: data_lib.CohortSource
    test_fraction: float
    partition: data_lib.PartitionConfig
    model_factory: Callable[..., Model]
    federation: FederatedConfig
    dp: DPSGDSettings | None
    defenses: DefenseStack = DefenseStack()
    delta: float = 1e-5
    attack: object | None
    attack_compilation: AttackCompilation = AttackCompilation()
    attack_prior: ImagePriorConfig | None = None
    public_records: int = 512
    observe_round: int = -1
    num_victims: int = 1
    membership: LiraConfig | None = None

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
        # iDLG reads one label off the head update: caught here, not after the whole training run.
        if self.attack is not None and not isinstance(self.attack, ATTACK_CONFIGS):
            raise ValueError(f"attack.config must be one of {[c.__name__ for c in ATTACK_CONFIGS]}, "
                             f"got {type(self.attack).__name__}")
        if self.attack is not None:
            fits = {"ehr": CodeRecoveryConfig, "notes": TokenRecoveryConfig}.get(self.cohort.kind, IMAGE_ATTACKS)
            if not isinstance(self.attack, fits):
                allowed = [c.__name__ for c in (fits if isinstance(fits, tuple) else (fits,))]
                raise ValueError(f"attack {type(self.attack).__name__} does not fit data.cohort.kind "
                                 f"{self.cohort.kind!r}: use one of {allowed}")
        if (self.attack_prior is None) != (not isinstance(self.attack, GenerativePriorConfig)):
            raise ValueError("attack.prior must be set exactly when the attack is a generative-prior inversion")
        if (self.attack is not None and getattr(self.attack, "label_strategy", None) == "idlg"
                and self.federation.local_steps * self.federation.batch_size != 1):
            raise ValueError("attack label_strategy 'idlg' needs one local step of batch 1, got local_steps="
                             f"{self.federation.local_steps}, batch_size={self.federation.batch_size}; "
                             "use label_strategy 'known' (attack.config.label_strategy=known) or no attack")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.defenses.audit_ledger:
            if self.dp is None and self.defenses.dp_fedavg is None:
                raise ValueError("defense.audit_ledger records each round's DP parameters: it needs defense.dp_sgd "
                                 "or defense.dp_fedavg")
            if self.defenses.tiers is not None or self.output_dir is None:
                raise ValueError("defense.audit_ledger needs a run folder (output_dir) and one plan per hospital "
                                 "(not defense.tiers)")
        if self.defenses.tiers is not None and self.dp is None:
            raise ValueError("defense.tiers needs example-level DP-SGD: set defense.dp_sgd=true")
        if self.defenses.tiers is not None and self.dp.stop_on_budget:
            raise ValueError("privacy.stop_on_budget is not supported with defense.tiers (each tier is calibrated "
                             "to its own budget for the planned rounds)")
        if self.defenses.dp_fedavg is not None and self.federation.clients_per_round is not None:
            raise ValueError("DP-FedAvg accounts for Poisson client sampling: set algorithm.client_sampling_rate "
                             f"(or full participation) instead of clients_per_round={self.federation.clients_per_round}")
        if (self.attack is not None and self.defenses.private_head
                and getattr(self.attack, "label_strategy", None) == "idlg"):
            raise ValueError("attack label_strategy 'idlg' reads labels off the head, which model partitioning "
                             "keeps private; use label_strategy 'known'")


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
    """Flat metrics plus the images to draw: ``truth`` and ``reconstructed`` are
    ``[V, K, H, W, C]`` matched pairs per victim (K the number of matched records)."""

    metrics: dict[str, float | int | str]
    truth: np.ndarray | None
    reconstructed: np.ndarray | None


def run_scenario(config: ScenarioConfig) -> ScenarioResult:
    """Runs one scenario and returns its metrics (see ``ScenarioResult``)."""
    started = time.perf_counter()
    keys = run_keys(config.seed)
    federation = config.federation
    generator = numpy_generator(keys.data)
    cohort = data_lib.load_cohort(config.cohort, generator)
    train_cohort, test_cohort = data_lib.split_train_test(cohort, config.test_fraction, generator)
    tokens = isinstance(cohort, TokenRecords)
    if tokens:
        partition = partition_records(train_cohort, config.partition, generator)
    else:
        partition, train_cohort = data_lib.partition_cohort(train_cohort, config.partition, generator)
    sizes = np.array([len(p) for p in partition])
    model = config.model_factory(input_shape=cohort.input_shape, num_classes=cohort.num_classes,
                                 **({"vocabulary_size": cohort.vocabulary_size} if tokens else {}))
    check_input_shape(model, cohort.input_shape)
    public_images = prior = None
    if isinstance(config.attack, (ImprintConfig,)) or config.attack_prior is not None:
        # Public knowledge of the attacker: phantoms of other patients (never the cohort's).
        public_images = data_lib.make_phantom_cohort(
            config.public_records, cohort.input_shape[0], numpy_generator(jax.random.fold_in(keys.attack, 3)),
            num_classes=min(cohort.num_classes, 5)).images
    if isinstance(config.attack, ImprintConfig):  # the malicious server crafts the model it sends
        attack = config.attack
        model, _ = make_imprint_model(model, bins=attack.bins, measurement=attack.measurement,
                                      public_inputs=public_images, key=jax.random.fold_in(keys.attack, 4),
                                      output_scale=attack.output_scale, gain=attack.gain,
                                      lowest_level=attack.lowest_level)
    if config.attack_prior is not None:
        prior_started = time.perf_counter()
        prior = train_image_prior(public_images, config.attack_prior, jax.random.fold_in(keys.attack, 5))
        prior_seconds = time.perf_counter() - prior_started
    stack = config.defenses
    tier_names = cohort.tier_names if tokens else ("general",)
    record_tiers = train_cohort.tiers if tokens else np.zeros(train_cohort.num_records, np.int32)

    plan = None
    if config.dp is not None:
        sampling_rate = federation.batch_size / float(np.mean(sizes))
        if sampling_rate > 1:
            raise ValueError(f"batch_size {federation.batch_size} exceeds the mean hospital size "
                             f"{np.mean(sizes):.1f}: the Poisson sampling rate would be above 1")
        if stack.tiers is not None:
            stack.tiers.check_cohort_tiers(tier_names)
            plan = TieredDPSGDPlan.calibrated(
                budgets={tier: stack.tiers.budgets[tier] for tier in tier_names}, delta=config.dp.delta,
                method=stack.tiers.method, l2_clip_norm=config.dp.l2_clip_norm, sampling_rate=sampling_rate,
                steps=federation.rounds * federation.local_steps, expected_batch_size=float(federation.batch_size),
                accountant=config.dp.accountant)
        else:
            plan = config.dp.plan(sampling_rate=sampling_rate, rounds=federation.rounds,
                                  steps_per_round=federation.local_steps,
                                  expected_batch_size=float(federation.batch_size))
    tiered = isinstance(plan, TieredDPSGDPlan)
    record_rates = plan.record_sampling_rates(record_tiers) if tiered else None

    # DP-SGD's accounting assumes Poisson sampling; without DP, batches are drawn by shuffling.
    sampling = "poisson" if plan is not None else "shuffle"
    if sampling == "shuffle" and federation.batch_size > sizes.min():
        raise ValueError(f"batch_size {federation.batch_size} is larger than the smallest hospital "
                         f"({sizes.min()} records); lower algorithm.batch_size or change the partition")

    # Under Poisson sampling the capacity is a bound a draw exceeds with probability 1e-6
    # (larger draws grow it: exact sampling, one recompilation in that rare round).
    capacity = (federation.batch_size if plan is None
                else data_lib.poisson_capacity(int(sizes.max()), max(plan.sampling_rates) if tiered
                                               else plan.sampling_rate))

    def round_data(round_index: int, participating: np.ndarray) -> ClientData:
        return data_lib.build_round_data(
            train_cohort.images, train_cohort.labels, partition, local_steps=federation.local_steps,
            batch_size=capacity, sampling=sampling, record_tiers=record_tiers if tiered else None,
            sampling_rate=(record_rates if tiered else plan.sampling_rate) if plan is not None else None,
            participating=participating,
            # The "sampling" stream picks hospitals; batches come from the "data" stream
            # (the cohort from its root, round r's batches from fold_in(data, r + 1)).
            generator=numpy_generator(jax.random.fold_in(keys.data, round_index + 1)))

    ledger = stop_before_round = None
    if plan is not None and config.dp.stop_on_budget:
        ledger = privacy.PrivacyLedger(unit=plan.unit, budget_epsilon=config.dp.target_epsilon,
                                       delta=config.dp.delta, accountant=config.dp.accountant)

        def stop_before_round(round_index: int) -> str:
            sigma = plan.noise_multiplier_in_round(round_index)
            exhausted = ledger.stop_if_would_exceed(next_round_noise_multiplier=sigma,
                                                    sampling_rate=plan.sampling_rate, steps=federation.local_steps)
            if exhausted is not None:
                return exhausted.reason
            ledger.record_round(sigma, plan.sampling_rate, federation.local_steps)
            return ""

    fedavg_plan = None
    if stack.dp_fedavg is not None:
        fedavg_plan = stack.dp_fedavg.plan(client_sampling_rate=federation.client_sampling_rate or 1.0,
                                           rounds=federation.rounds, num_clients=len(partition))
    federation = dataclasses.replace(federation, private_head=stack.private_head)

    accept_model, refusals = stack.model_screen(len(partition))
    recorder = on_round = None
    if stack.audit_ledger:
        ledger_plan = plan if plan is not None else fedavg_plan
        recorder = LedgerRecorder(Path(config.output_dir) / "audit_ledger.jsonl", num_clients=len(partition),
                                  unit=ledger_plan.unit, l2_clip_norm=ledger_plan.l2_clip_norm,
                                  delta=config.dp.delta if plan is not None else stack.dp_fedavg.delta,
                                  accountant=config.dp.accountant if plan is not None else stack.dp_fedavg.accountant)

        def on_round(round_index, participating, sent):
            if plan is not None:  # each hospital's DP-SGD steps of the round
                release = dict(noise_multiplier=plan.noise_multiplier_in_round(round_index),
                               sampling_rate=plan.sampling_rate, steps=federation.local_steps)
            else:  # the client-level release the hospital took part in
                release = dict(noise_multiplier=fedavg_plan.noise_multiplier_in_round(round_index),
                               sampling_rate=fedavg_plan.client_sampling_rate, steps=1)
            recorder.record(round_index, participating, sent, **release)

    observe_round = config.observe_round % federation.rounds
    params = model.init(keys.init, jnp.zeros((1, *cohort.input_shape), cohort.images.dtype))
    if isinstance(config.attack, AnalyticConfig) and "bias" not in params.get(config.attack.layer, {}):
        raise ValueError(f"attack.config.layer {config.attack.layer!r} is not a dense layer with bias of model "
                         f"{model.name!r}; its layers: {sorted(params)}")
    training = train(model=model, config=federation, params=params, round_data=round_data,
                     sampling_key=keys.sampling, clients_key=keys.clients, num_clients=len(partition),
                     observe_rounds=[observe_round] if config.attack is not None else [], dp_plan=plan,
                     stop_before_round=stop_before_round,
                     aggregation=stack.aggregation(weighting=federation.weighting, dp_fedavg_plan=fedavg_plan),
                     server_key=keys.noise, update_transform=stack.client_transform(), on_round=on_round,
                     accept_model=accept_model)
    hospital_accuracies = [metrics.accuracy(model, training.hospital_params(model, client), test_cohort.images,
                                            test_cohort.labels)
                           for client in (range(len(partition)) if stack.private_head else [0])]
    results: dict[str, float | int | str] = {
        # With partitioning, each hospital's own model (shared extractor + its head), averaged.
        "utility.test_accuracy": float(np.mean(hospital_accuracies)),
        "train.seconds": float(np.sum(training.seconds_per_round)),
        "train.seconds_per_round": float(np.median(training.seconds_per_round)),
        "train.rounds_run": training.rounds_run,
        "train.stop_reason": training.stop_reason,
        "data.num_train_records": int(train_cohort.num_records),
        "data.num_test_records": int(test_cohort.num_records),
        "data.smallest_hospital": int(sizes.min()),
        "data.largest_hospital": int(sizes.max()),
        "model.num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
    }
    if ledger is not None:  # what the run really spent, up to where the ledger stopped it
        results.update(ledger.as_dict(config.dp.delta))
        results["privacy.unit"] = plan.unit
    elif plan is not None:
        results.update(plan.report(config.dp.delta).as_dict())
    elif fedavg_plan is not None:
        results.update(fedavg_plan.report(stack.dp_fedavg.delta).as_dict())
    else:
        results.update({"privacy.unit": "none", "privacy.epsilon": float("inf")})
    if tiered:
        for tier, report in plan.tier_reports(config.dp.delta).items():
            results[f"privacy.tier.{tier}.epsilon"] = report.epsilon
            results[f"privacy.tier.{tier}.budget"] = float(stack.tiers.budgets[tier])
            results[f"privacy.tier.{tier}.records"] = int(np.sum(record_tiers == tier_names.index(tier)))
    if fedavg_plan is not None and plan is not None:  # both guarantees hold; the client-level one beside
        report = fedavg_plan.report(stack.dp_fedavg.delta)
        results["privacy.client.epsilon"] = report.epsilon
        results["privacy.client.noise_multiplier"] = report.noise_multiplier
    if stack.local_dp is not None:
        results["privacy.local_dp.mechanism"] = stack.local_dp.mechanism
        results["privacy.local_dp.epsilon_per_round"] = stack.local_dp.epsilon
    results.update(defense_costs(stack, training, params))
    if stack.model_screening is not None:
        results["defense.models_refused"] = len(refusals)
        results["defense.first_refusal"] = "; ".join(refusals[0][2]) if refusals else ""
    if recorder is not None:
        results.update(recorder.verify())
    if plan is not None and not tiered and config.dp.audit_trials:
        results.update(audit_one_step(plan, config.dp.audit_trials, config.dp.delta,
                                      jax.random.fold_in(keys.attack, 1), params))
    elif fedavg_plan is not None and stack.dp_fedavg.audit_trials:
        results.update(audit_one_step(fedavg_plan, stack.dp_fedavg.audit_trials, stack.dp_fedavg.delta,
                                      jax.random.fold_in(keys.attack, 1), params))
    if plan is not None and not tiered:
        results["privacy.schedule"] = config.dp.schedule["kind"]
        results["privacy.sampling_rate"] = plan.sampling_rate
        results["privacy.noise_multiplier_first_round"] = plan.noise_multiplier_in_round(0)
        results["privacy.noise_multiplier_last_round"] = plan.noise_multiplier_in_round(federation.rounds - 1)

    truth = reconstructed = None
    if config.attack is not None and observe_round not in training.observations:
        results["attack.status"] = f"round {observe_round} was never run: {training.stop_reason}"
    elif (config.attack is not None and training.observations[observe_round].aggregated
          and not isinstance(config.attack, ImprintConfig)):
        results["attack.status"] = ("the server observed only the aggregate of the updates "
                                    f"({stack.protocol.name}): no per-hospital update to invert")
        results["attack.round"] = observe_round
    elif config.attack is not None and training.observations[observe_round].aggregated:
        # The imprint reads records off the SUM: every participant's records are the victims'.
        observation = training.observations[observe_round]
        client_data = training.observed_data[observe_round]
        merged, merged_partition = merge_participants(client_data, partition)
        observation = dataclasses.replace(observation, metadata=dataclasses.replace(observation.metadata,
                                                                                     client_ids=(0,)))
        scores, truth, reconstructed = run_attack(
            config.attack, observation=observation, client_data=merged, model=model, victims=[0], key=keys.attack,
            compilation=config.attack_compilation, cohort=train_cohort, partition=merged_partition)
        results.update(scores)
        results["attack.round"] = observe_round
    elif config.attack is not None and not training.observations[observe_round].metadata.client_ids:
        # e.g. every hospital refused the crafted model: nothing was sent, nothing leaks.
        results.update({"attack.status": f"no hospital sent an update in round {observe_round}",
                        "attack.records_scored": 0, "attack.exact_recovery_rate": 0.0, "attack.round": observe_round})
    elif config.attack is not None:
        observation = training.observations[observe_round]
        victims = list(range(min(config.num_victims, len(observation.metadata.client_ids))))
        noise_stddev = 0.0
        if plan is not None:  # the public per-coordinate noise in one DP-SGD update
            sum_stddev = (plan.noise_stddev if tiered
                          else plan.noise_multiplier_in_round(observe_round) * plan.l2_clip_norm)
            noise_stddev = update_noise_stddev(sum_stddev, plan.expected_batch_size,
                                               learning_rate=federation.local.learning_rate,
                                               local_steps=federation.local_steps)
        scores, truth, reconstructed = run_attack(
            config.attack, observation=observation, client_data=training.observed_data[observe_round], model=model,
            victims=victims, key=keys.attack, compilation=config.attack_compilation, cohort=train_cohort,
            partition=partition, prior=prior, noise_stddev=noise_stddev)
        results.update(scores)
        results["attack.round"] = observe_round
        if prior is not None:
            results["attack.prior_training_seconds"] = prior_seconds
    if config.membership is not None:
        results.update(membership_inference(config.membership, model, training.params, train_cohort, test_cohort,
                                            partition[0], jax.random.fold_in(keys.attack, 2)))
    results["scenario.seconds"] = time.perf_counter() - started
    return ScenarioResult(results, truth, reconstructed)
