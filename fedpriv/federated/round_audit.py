"""An end-to-end canary audit of the WHOLE federated round (DESIGN §6).

The mechanism-level audit (:func:`fedpriv.privacy.run_gradient_canary_trials`) checks that a
plan's noise code adds what it claims. This one checks everything around it: client
sampling, the hospitals' batch sampling, the client-side stages, the aggregation weights,
screening, the protocol and the server's noise, as :func:`fedpriv.federated.train` runs them.

Each trial is one round of one real training run. A fair coin per round decides whether
the canary is in the data: for the example unit, a canary record in hospital 0; for the
client unit, a canary hospital. The model is linear with loss ``-<w, x>``, so an
example's gradient is ``-x`` whatever the params (rounds are independent trials of the same
mechanism) and the canary's clipped gradient points along coordinate 0, where no ordinary
record has any weight. The auditor sees what everybody sees, the new global model, and
scores a round by the canary coordinate of the global update (an update that is exactly
zero scores ``-inf``: nothing was released). Any score is a valid test; the lower bounds
are compared with the accountant's epsilon of one round of the plan.

:class:`BrokenPlan` builds deliberately wrong plans (weights by realised counts, half the
noise claimed) so a test can show that the audit catches them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv import privacy
from fedpriv.data.client_data import build_round_data
from fedpriv.defenses.aggregation_protocols import SecureAggregationProtocol
from fedpriv.defenses.anomaly import AnomalyConfig
from fedpriv.defenses.plans import Composition, PrivacyConfig, RoundNoise, RunShape
from fedpriv.defenses.server_stages import AnomalyScreening, PlaintextSum, ProtocolSum, ServerPipeline, WeightedMean
from fedpriv.federated.local_sgd import LocalTrainingConfig
from fedpriv.federated.training import FederatedConfig, Federation, TrainingHooks, TrainingKeys, train
from fedpriv.keys import numpy_generator
from fedpriv.privacy.ledger import PrivacyLedger
from fedpriv.typing import Model

CANARY_SIZE = 1e3  # far above any clip norm: the canary's clipped contribution has norm exactly C
UNITS = ("example", "client")


def canary_model(dimension: int) -> Model:
    """The linear model of the audit: per-example loss ``-<w, x>``, gradient ``-x``."""
    def per_example_loss(params, batch):
        return -jnp.sum(batch["x"] * params["w"], axis=-1)
    return Model(init=lambda key, x: {"w": jnp.zeros(dimension, jnp.float32)},
                 apply=lambda params, x: jnp.zeros((x.shape[0], 2)) + jnp.sum(x * params["w"], -1, keepdims=True),
                 per_example_loss=per_example_loss, input_shape=(dimension,), num_classes=2, head_names=(),
                 name="canary_linear")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundAuditSetup:
    """The federation the audit runs.

    Attributes:
      unit: ``"example"`` (a canary record in hospital 0) or ``"client"`` (a canary hospital).
      hospitals: ordinary hospitals (for the example unit, hospital 0 is one of them).
      records_per_hospital: ordinary records each; hospital 0 holds ``canary_hospital_records``
        ordinary ones instead (0: the canary alone).
      canary_hospital_records: ordinary records of hospital 0 (example unit).
      batch_size: the protocol's batch size (with DP-SGD the Poisson rate is
        ``batch_size / mean hospital size``, the canary present).
      client_sampling_rate: ``None`` (every hospital every round) or Poisson client sampling.
      protocol: ``None`` (plaintext) or a secure protocol.
      screening: ``None`` or an anomaly screen.
      dimension: the linear model's size.
    """

    unit: str
    hospitals: int = 3
    records_per_hospital: int = 2
    canary_hospital_records: int = 1
    batch_size: int = 2
    client_sampling_rate: float | None = None
    protocol: SecureAggregationProtocol | None = None
    screening: AnomalyConfig | None = None
    dimension: int = 8

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.unit == "example" and self.canary_hospital_records + 1 < 1:
            raise ValueError("hospital 0 must hold at least the canary")

    def hospital_sizes(self) -> tuple[int, ...]:
        """Each hospital's records with the canary present (what the plan is made for)."""
        ordinary = [self.records_per_hospital] * self.hospitals
        if self.unit == "example":
            return (self.canary_hospital_records + 1, *ordinary[1:])
        return (*ordinary, self.records_per_hospital)  # the canary hospital last

    def run_shape(self, rounds: int) -> RunShape:
        return RunShape(rounds=rounds, local_steps=1, batch_size=self.batch_size,
                        hospital_sizes=self.hospital_sizes(),
                        client_selection="all" if self.client_sampling_rate is None else "poisson",
                        client_sampling_rate=self.client_sampling_rate or 1.0)

    def pipeline(self, server_noise) -> ServerPipeline:
        return ServerPipeline(
            screens=() if self.screening is None else (AnomalyScreening(config=self.screening),),
            protocol=PlaintextSum() if self.protocol is None else ProtocolSum(protocol=self.protocol),
            aggregator=WeightedMean() if server_noise is None else server_noise)

    def composition(self) -> Composition:
        return Composition(server_stages=("screening",) if self.screening is not None else (),
                           protocol="plaintext" if self.protocol is None else self.protocol.name,
                           client_selection="all" if self.client_sampling_rate is None else "poisson")


@dataclasses.dataclass(frozen=True)
class BrokenPlan:
    """A DELIBERATELY WRONG plan for audits (never train with it): it claims ``plan``'s privacy
    and report, but weights by realised sample counts (``"realised_weights"``) or adds
    ``noise_factor`` of the noise it claims (``"scaled_noise"``)."""

    plan: Any
    defect: str
    noise_factor: float = 0.5

    def __getattr__(self, name):
        return getattr(self.plan, name)

    def aggregation_weights(self, weighting, client_mask, realised_examples):
        if self.defect == "realised_weights":
            return jnp.asarray(realised_examples, jnp.float32) * client_mask
        return self.plan.aggregation_weights(weighting, client_mask, realised_examples)

    def round_noise(self, round_index: int) -> RoundNoise:
        # Every mechanism reads its multiplier from here (traced into the round), the server's too.
        noise = self.plan.round_noise(round_index)
        if self.defect != "scaled_noise":
            return noise
        scale = lambda value: None if value is None else value * self.noise_factor
        return RoundNoise(local=scale(noise.local), server=scale(noise.server))


@dataclasses.dataclass
class _CanaryRounds:
    """The rounds' data: a fair coin per round puts the canary in (recorded in ``present``)."""

    setup: RoundAuditSetup
    sampling: Any
    key: jax.Array

    def __post_init__(self):
        setup, generator = self.setup, numpy_generator(jax.random.fold_in(self.key, 0))
        ordinary = generator.normal(size=(setup.hospitals * setup.records_per_hospital, setup.dimension))
        ordinary[:, 0] = 0.0  # only the canary moves coordinate 0
        canary = np.zeros((max(setup.records_per_hospital, 1), setup.dimension))
        canary[:, 0] = CANARY_SIZE
        self.records = np.concatenate([ordinary, canary]).astype(np.float32)
        self.labels = np.zeros(len(self.records), np.int32)
        first_canary = len(ordinary)
        parts = [np.arange(h * setup.records_per_hospital, (h + 1) * setup.records_per_hospital)
                 for h in range(setup.hospitals)]
        if setup.unit == "example":
            own = parts[0][:setup.canary_hospital_records]
            self.with_canary = [np.append(own, first_canary), *parts[1:]]
            self.without_canary = [own, *parts[1:]]
        else:  # the canary hospital exists only when present (see __call__)
            canary_hospital = np.arange(first_canary, first_canary + setup.records_per_hospital)
            self.with_canary = self.without_canary = [*parts, canary_hospital]
        self.coins = numpy_generator(jax.random.fold_in(self.key, 1))
        self.present: list[bool] = []

    def __call__(self, round_index: int, participating: np.ndarray):
        present = bool(self.coins.random() < 0.5)
        self.present.append(present)
        partition = self.with_canary if present else self.without_canary
        if self.setup.unit == "client" and not present:  # the canary hospital does not exist
            participating = participating.copy()
            participating[-1] = False
        poisson = self.sampling.kind == "poisson"
        return build_round_data(
            self.records, self.labels, partition, local_steps=1, batch_size=self.sampling.capacity,
            sampling=self.sampling.kind, participating=participating,
            sampling_rate=self.sampling.record_rates(np.zeros(len(self.records), np.int64)) if poisson else None,
            generator=numpy_generator(jax.random.fold_in(self.key, 2 + round_index)))


class _GlobalUpdates:
    """Records each round's global update (what everybody sees)."""

    def __init__(self, params):
        self.previous, self.updates = np.asarray(params["w"]), []

    def after_round(self, round_index, participating, outcome):
        current = np.asarray(outcome.state.params["w"])
        self.updates.append(current - self.previous)
        self.previous = current


@dataclasses.dataclass(frozen=True)
class RoundAudit:
    """The audit's trials and its bounds beside the accountant's epsilon of one round.

    Attributes:
      present_scores: scores of the rounds with the canary.
      absent_scores: scores of the rounds without it.
      accountant_epsilon: the plan's epsilon for ONE round (its ``ledger_rounds``) at ``delta``.
      clopper_pearson: the Clopper-Pearson lower bound (split threshold), valid for any mechanism.
      gaussian_dp: the Gaussian-DP lower bound (split threshold); valid only when one round is
        a Gaussian mechanism (no sampling below 1), else ``None``.
    """

    present_scores: np.ndarray
    absent_scores: np.ndarray
    accountant_epsilon: float
    clopper_pearson: Any
    gaussian_dp: Any

    @property
    def epsilon_lower_bound(self) -> float:
        bounds = [self.clopper_pearson.epsilon_lower_bound]
        if self.gaussian_dp is not None:
            bounds.append(self.gaussian_dp.epsilon_lower_bound)
        return max(bounds)


def audit_round(privacy_config: PrivacyConfig, setup: RoundAuditSetup, *, trials: int, key: jax.Array,
                delta: float = 1e-5, defect: str | None = None, noise_factor: float = 0.5) -> RoundAudit:
    """Runs ``trials`` rounds of a real training run with a canary coin per round and audits them.

    Args:
      privacy_config: the privacy config under audit; its plan is made for the setup and
        checked against the setup's stages, as a run would.
      setup: the federation.
      trials: rounds, each one trial (about half with the canary).
      key: the audit's key (data, coins and every training stream).
      delta: the delta of the bounds and of the accountant's epsilon.
      defect: ``None``, or a :class:`BrokenPlan` defect to audit instead of the real plan.
      noise_factor: the noise a ``"scaled_noise"`` defect adds, as a share of the claimed.

    Returns:
      A :class:`RoundAudit`.

    Raises:
      ValueError: if the plan refuses the setup, or the trials are too few to certify anything.

    **Formal guarantees**

    - Bound: with probability >= 95 % each lower bound is below the true epsilon of one
      round (Clopper-Pearson always; Gaussian-DP if one round is Gaussian), so a bound above
      ``accountant_epsilon`` refutes the plan's accounting of the whole round.
    - Relation and unit: add/remove-one canary record (example) or canary hospital (client).
    """
    plan = privacy_config.make(setup.run_shape(trials))
    plan.check_composition(setup.composition())
    claimed = plan
    if defect is not None:
        plan = BrokenPlan(plan, defect, noise_factor)
    model = canary_model(setup.dimension)
    sizes = setup.hospital_sizes()
    config = FederatedConfig(algorithm="fedsgd", rounds=trials, clients_per_round=None, local_steps=1,
                             batch_size=setup.batch_size, local=LocalTrainingConfig(learning_rate=1.0),
                             client_sampling_rate=setup.client_sampling_rate, server_optimizer="sgd",
                             server_learning_rate=1.0, backend="vmap")
    federation = Federation(model=model, config=config, plan=plan, num_clients=len(sizes),
                            client_stages=plan.client_update_stages(None), pipeline=setup.pipeline(plan.server_noise()))
    params = model.init(key, jnp.zeros((1, setup.dimension)))
    data = _CanaryRounds(setup, claimed.batch_sampling, jax.random.fold_in(key, 1))
    updates = _GlobalUpdates(params)
    train(federation, params=params, data=data, hooks=TrainingHooks(observers=(updates,)),
          keys=TrainingKeys(sampling=jax.random.fold_in(key, 2), clients=jax.random.fold_in(key, 3),
                            server=jax.random.fold_in(key, 4)))
    deltas = np.stack(updates.updates)
    scores = np.where(np.any(deltas != 0, axis=1), deltas[:, 0], -np.inf)
    present = np.asarray(data.present)
    return _bounds(claimed, scores[present], scores[~present], delta, gaussian=_is_gaussian(claimed, setup))


def one_round_epsilon(plan, delta: float, accountant: str = "pld") -> float:
    """The plan's epsilon for round 0 alone (what one trial of the audit releases)."""
    epsilons = []
    for key, entry in plan.ledger_rounds(0).items():
        ledger = PrivacyLedger(unit="client" if key == "client" else "example")
        ledger.record_round(entry.noise_multiplier, entry.sampling_rate, entry.steps)
        epsilons.append(ledger.epsilon(delta, accountant))
    return max(epsilons) if epsilons else float("inf")


def _is_gaussian(plan, setup: RoundAuditSetup) -> bool:
    """One round is one Gaussian release of the canary: no record or client sampling below 1."""
    rates = [entry.sampling_rate for entry in plan.ledger_rounds(0).values()]
    return bool(rates) and all(rate == 1.0 for rate in rates) and setup.client_sampling_rate is None


def _bounds(plan, present, absent, delta: float, *, gaussian: bool) -> RoundAudit:
    # Scores of -inf (nothing released) stay comparable: the threshold search handles them.
    finite_floor = lambda scores: np.where(np.isfinite(scores), scores, -1e30)
    present, absent = finite_floor(present), finite_floor(absent)
    clopper_pearson = privacy.clopper_pearson_audit(present, absent, delta=delta, threshold_selection="split")
    gaussian_dp = (privacy.gaussian_dp_audit(present, absent, delta=delta, threshold_selection="split")
                   if gaussian else None)
    return RoundAudit(present_scores=present, absent_scores=absent, accountant_epsilon=one_round_epsilon(plan, delta),
                      clopper_pearson=clopper_pearson, gaussian_dp=gaussian_dp)
