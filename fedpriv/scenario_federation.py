"""The scenario's first stages: build the federation (cohorts, hospitals, model, privacy plan,
defenses), then train it. Part of the scenario: it holds the ground truth (which records
each hospital has, which were held out for the membership experiment)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv import data as data_lib
from fedpriv.defenses.audit_log_recorder import AuditLogRecorder
from fedpriv.defenses.plans import BatchSampling, PlanLedger, PrivacyPlan, RunShape
from fedpriv.federated import Federation, TrainingHooks, TrainingKeys, train
from fedpriv.federated.checkpoints import RoundCheckpoints
from fedpriv.federated.defense_stack import HospitalModelScreens
from fedpriv.keys import RunKeys, numpy_generator
from fedpriv.models.base import check_input_shape
from fedpriv.typing import ClientData, Model

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MembershipSplit:
    """The membership experiment's coins: each record of the target hospital was kept for
    training (a member) or held out before training (a non-member) by a fair coin, so both
    groups come from the same hospital and distribution (Steinke, Nasr, Jagielski 2023)."""

    hospital: int
    records: np.ndarray  # the target hospital's record ids, in the training cohort
    included: np.ndarray  # bool, the coin of each record


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cohorts:
    """A run's data: the training cohort as the hospitals see it, the test cohort, each
    hospital's training records and every record's sensitivity tier."""

    train: object
    test: object
    partition: list
    record_tiers: np.ndarray
    tier_names: tuple[str, ...]
    tokens: bool
    membership: MembershipSplit | None = None

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(part) for part in self.partition])


def build_cohorts(config, keys: RunKeys) -> Cohorts:
    """Loads the cohort, splits train/test, partitions it into hospitals, and (when the
    scenario measures membership) holds out a fair-coin half of the target hospital."""
    generator = numpy_generator(keys.data)
    cohort = data_lib.load_cohort(config.cohort, generator)
    train_cohort, test_cohort = data_lib.split_train_test(cohort, config.test_fraction, generator)
    tokens = isinstance(cohort, data_lib.TokenRecords)
    if tokens:
        partition = data_lib.partition_records(train_cohort, config.partition, generator)
    else:
        partition, train_cohort = data_lib.partition_cohort(train_cohort, config.partition, generator)
    membership = None
    if config.membership is not None:
        records = np.asarray(partition[0])
        included = numpy_generator(keys.membership).random(records.size) < 0.5
        if included.sum() < 2 or (~included).sum() < 2:
            raise ValueError(f"hospital 0 has {records.size} records: too few to hold out a membership half")
        membership = MembershipSplit(hospital=0, records=records, included=included)
        partition = [records[included], *partition[1:]]
    return Cohorts(train=train_cohort, test=test_cohort, partition=list(partition),
                   record_tiers=(train_cohort.tiers if tokens else np.zeros(train_cohort.num_records, np.int32)),
                   tier_names=cohort.tier_names if tokens else ("general",), tokens=tokens, membership=membership)


def build_model(config, cohorts: Cohorts) -> Model:
    cohort = cohorts.train
    model = config.model_factory(input_shape=cohort.input_shape, num_classes=cohort.num_classes,
                                 **({"vocabulary_size": cohort.vocabulary_size} if cohorts.tokens else {}))
    check_input_shape(model, cohort.input_shape)
    return model


def run_shape(config, cohorts: Cohorts) -> RunShape:
    """The public facts the privacy plan is made for."""
    federation = config.federation
    selection = ("poisson" if federation.client_sampling_rate is not None
                 else "all" if federation.clients_per_round is None else "fixed_size")
    return RunShape(rounds=federation.rounds, local_steps=federation.local_steps, batch_size=federation.batch_size,
                    hospital_sizes=tuple(int(size) for size in cohorts.sizes), client_selection=selection,
                    client_sampling_rate=federation.client_sampling_rate or 1.0, tier_names=cohorts.tier_names)


def make_plan(config, cohorts: Cohorts) -> PrivacyPlan:
    """The privacy plan of the run, checked against everything it composes with (before compute)."""
    plan = config.privacy.make(run_shape(config, cohorts))
    plan.check_composition(config.defenses.composition(config.federation,
                                                       stop_on_budget=config.privacy_options.stop_on_budget))
    return plan


@dataclasses.dataclass(frozen=True)
class CohortRounds:
    """The rounds' data (``fedpriv.federated.RoundData``): each hospital's batches as the plan samples them.

    Round ``r``'s batches come from ``fold_in(batches, r)``, so they are independent of
    the client sampling and of every other round.
    """

    cohorts: Cohorts
    local_steps: int
    sampling: BatchSampling
    batches_key: jax.Array

    def __call__(self, round_index: int, participating: np.ndarray) -> ClientData:
        poisson = self.sampling.kind == "poisson"
        return data_lib.build_round_data(
            self.cohorts.train.images, self.cohorts.train.labels, self.cohorts.partition,
            local_steps=self.local_steps, batch_size=self.sampling.capacity, sampling=self.sampling.kind,
            record_tiers=self.cohorts.record_tiers if poisson else None,
            sampling_rate=self.sampling.record_rates(self.cohorts.record_tiers), participating=participating,
            generator=numpy_generator(jax.random.fold_in(self.batches_key, round_index)))


@dataclasses.dataclass
class TrainedFederation:
    """What training produced and the parties that watched it."""

    federation: Federation
    initial_params: object
    training: object
    ledger: PlanLedger | None
    screens: HospitalModelScreens | None
    recorder: AuditLogRecorder | None


def train_federation(config, cohorts: Cohorts, model: Model, plan: PrivacyPlan, keys: RunKeys,
                     observe_rounds: list[int]) -> TrainedFederation:
    """Trains the federation with its plan, defenses and hooks; the attacker records ``observe_rounds``.

    With ``config.checkpoint`` training resumes from the newest intact checkpoint of the run's
    folder, if any (the audit log is then reopened, not created)."""
    stack, options = config.defenses, config.privacy_options
    federation_config = dataclasses.replace(config.federation, private_head=stack.private_head)
    federation = Federation(model=model, config=federation_config, plan=plan, num_clients=len(cohorts.partition),
                            client_stages=stack.client_stages(plan), pipeline=stack.pipeline(plan.server_noise()))
    ledger = PlanLedger(plan, delta=options.delta, accountant=options.accountant) if options.stop_on_budget else None
    screens = (None if stack.model_screening is None
               else HospitalModelScreens(config=stack.model_screening, num_clients=len(cohorts.partition)))
    checkpoints = (None if config.checkpoint is None
                   else RoundCheckpoints.from_config(config.checkpoint, config.output_dir))
    recorder = None
    if stack.audit_log:
        recorder = AuditLogRecorder(Path(config.output_dir) / "audit_log.jsonl", plan=plan,
                                    num_clients=len(cohorts.partition), l2_clip_norm=_clip_norm(plan),
                                    delta=options.delta, accountant=options.accountant,
                                    resume=checkpoints is not None and checkpoints.latest() is not None)
    params = model.init(keys.init, jnp.zeros((1, *cohorts.train.input_shape), cohorts.train.images.dtype))
    data = CohortRounds(cohorts=cohorts, local_steps=federation_config.local_steps, sampling=plan.batch_sampling,
                        batches_key=keys.batches)
    hooks = TrainingHooks(budget=ledger, model_screen=screens, observers=(recorder,) if recorder else ())
    training = train(federation, params=params, data=data, hooks=hooks, observe_rounds=observe_rounds,
                     keys=TrainingKeys(sampling=keys.sampling, clients=keys.clients, server=keys.noise),
                     checkpoints=checkpoints)
    return TrainedFederation(federation, params, training, ledger, screens, recorder)


def _clip_norm(plan: PrivacyPlan) -> float:
    """The clip norm a plan's audit-log records state (its first audited mechanism's)."""
    return next(iter(plan.audit_mechanisms().values())).l2_clip_norm


def save_membership_coins(path: Path, split: MembershipSplit) -> None:
    """Records the membership experiment's coins beside ``metrics.json`` (what the audit assumed)."""
    path.write_text(json.dumps({"hospital": split.hospital, "records": split.records.tolist(),
                                "included": split.included.tolist()}))
