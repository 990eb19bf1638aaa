"""Host-side privacy accounting with ``dp_accounting`` (DESIGN §4).

Accounting never runs inside ``jit``: it is exact-ish numerical work on Python floats,
done once per run (or once per calibration probe) on the host.

Two accountants, both valid upper bounds on epsilon:

- ``"rdp"``: ``dp_accounting.rdp.RdpAccountant`` with dp-accounting's default orders
  (:data:`RDP_ORDERS`: 1.1 to 10.9 in steps of 0.1, 11 to 63, then 128, 256, 512, 1024;
  156 orders). The pinned reference numbers (shared/reference/README.md) use them.
  Measured against 6300 orders spaced 0.01 apart on [1.01, 64]: MNIST DP-SGD 2.59656 vs
  2.59654, cross-silo (q=1, sigma 2, 100 steps) 35.0818 vs 35.0674, one Gaussian 4.72851
  vs 4.72839 -- at most 0.04 % looser, for 20x the cost; not worth it.
- ``"pld"``: ``dp_accounting.pld.PLDAccountant`` (privacy loss distributions), tighter
  than RDP (PLD <= RDP always). Its discretisation is pessimistic (the reported epsilon
  is an upper bound that decreases as the grid gets finer). We use
  :data:`PLD_VALUE_DISCRETIZATION_INTERVAL` = 1e-4 (dp-accounting's default). Measured
  on the MNIST setting (q = 256/60000, sigma 1.1, 14062 steps, delta 1e-5) on one CPU
  core: interval 1e-4 -> 2.381686 in 0.2 s; 2e-5 -> 2.381600 in 1.4 s; 1e-3 -> 2.3905 in
  0.03 s. So 1e-4 is within 1e-4 of the converged value, well inside the 1e-3 target,
  at a cost that keeps calibration (a few dozen accountant calls) interactive.

Neighbouring relation: add/remove-one everywhere (see :mod:`fedpriv.privacy.events`).

Events made only of Gaussian releases (every builder in :mod:`fedpriv.privacy.events`) are
accounted in one canonical form: sampled releases in order with equal neighbours grouped,
and all full-participation Gaussian releases merged into one Gaussian with
``sigma_eff = (sum count / sigma^2)^(-1/2)``. That is an exact identity (the composition of
Gaussian mechanisms is a Gaussian mechanism; Dong, Roth, Su 2019, arXiv 1905.02383), so the
numbers are those of the event as built, up to the accountant's own discretisation; it
turns a 100-round full-participation noise schedule from 100 PLD convolutions (14 s) into
one Gaussian PLD (about 1 s), and the :class:`fedpriv.privacy.PrivacyLedger` gives the very
same numbers round by round.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import math
from typing import Literal

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedpriv.privacy import _validation
from fedpriv.privacy import events as events_lib

logger = logging.getLogger(__name__)

AccountantName = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
UNITS: tuple[str, ...] = ("example", "client")
RELATIONS: tuple[str, ...] = ("add_remove_one",)

RDP_ORDERS: tuple[float, ...] = tuple(float(order) for order in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
PLD_VALUE_DISCRETIZATION_INTERVAL: float = 1e-4
NEIGHBORING_RELATION = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _rdp_summary() -> str:
    return f"dp_accounting DEFAULT_RDP_ORDERS ({len(RDP_ORDERS)} orders, {min(RDP_ORDERS):g} to {max(RDP_ORDERS):g})"


def _dp_accounting_version() -> str:
    try:
        return importlib.metadata.version("dp-accounting")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return "unknown"


def make_accountant(accountant: AccountantName) -> dp_accounting.PrivacyAccountant:
    """A fresh, empty ``dp_accounting`` accountant configured as documented above.

    Args:
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      A ``dp_accounting.PrivacyAccountant`` with the add/remove-one relation.

    Raises:
      ValueError: if ``accountant`` is not ``"rdp"`` or ``"pld"``.
    """
    accountant = _validation.check_choice(accountant, "accountant", ACCOUNTANTS)
    if accountant == "rdp":
        return rdp_privacy_accountant.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=NEIGHBORING_RELATION)
    return pld_privacy_accountant.PLDAccountant(
        neighboring_relation=NEIGHBORING_RELATION,
        value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL,
    )


def _composed(event: dp_accounting.DpEvent, accountant: AccountantName) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant with ``event`` composed in its accounting form (see the module docstring)."""
    return make_accountant(accountant).compose(events_lib._accounting_form(event))


def epsilon_for(event: dp_accounting.DpEvent, *, delta: float, accountant: AccountantName) -> float:
    """The epsilon at which ``event`` is ``(epsilon, delta)``-DP.

    Args:
      event: what was released, e.g. from :func:`fedpriv.privacy.dp_sgd_event`.
      delta: target delta, in (0, 1). Choose it well below 1 / (number of units).
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      Epsilon as a Python float; ``math.inf`` if the event contains a release without
      noise.

    Raises:
      ValueError: if ``delta`` or ``accountant`` is invalid (checked before any compute).
      dp_accounting.UnsupportedEventError: if the accountant cannot handle ``event``.

    **Formal guarantees**

    - Bound: the mechanism described by ``event`` is ``(epsilon, delta)``-DP, with
      epsilon an upper bound (RDP conversion of Canonne, Kamath, Steinke 2020 or the
      pessimistic PLD discretisation). RDP is looser than PLD; both are valid.
    - Relation: add/remove-one.
    - Unit: the unit whose contribution the event's sensitivity refers to (example or
      client), as fixed by the plan that built the event.
    - Not protected: anything released but missing from ``event``; the accountant
      trusts the event to describe the mechanism that actually ran.
    - Gaussian-only events (all fedpriv builders) are accounted in the canonical form of
      the module docstring, an exact re-expression of the same mechanism.

    References:
      Mironov 2017, "Renyi Differential Privacy", arXiv 1702.07476.
      Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential Privacy",
      arXiv 2004.00010 (Prop. 12, the RDP-to-DP conversion dp-accounting uses).
      Doroshenko et al. 2022, "Connect the Dots: Tighter Discrete Approximations of
      Privacy Loss Distributions", arXiv 2207.04380 (the PLD accountant).

    Example:
      >>> from fedpriv.privacy.events import dp_sgd_event
      >>> round(epsilon_for(dp_sgd_event(noise_multiplier=2.0, sampling_rate=1.0, steps=100),
      ...                   delta=1e-5, accountant="rdp"), 4)
      35.0818
    """
    delta = _validation.check_delta(delta)
    return float(_composed(event, accountant).get_epsilon(delta))


def delta_for(event: dp_accounting.DpEvent, *, epsilon: float, accountant: AccountantName) -> float:
    """The delta at which ``event`` is ``(epsilon, delta)``-DP.

    Args:
      event: what was released.
      epsilon: target epsilon, finite and > 0.
      accountant: ``"rdp"`` or ``"pld"``.

    Returns:
      Delta as a Python float in [0, 1].

    Raises:
      ValueError: if ``epsilon`` or ``accountant`` is invalid (checked before any compute).
      dp_accounting.UnsupportedEventError: if the accountant cannot handle ``event``.

    **Formal guarantees**

    - Bound: the mechanism described by ``event`` is ``(epsilon, delta)``-DP, with delta
      an upper bound.
    - Relation: add/remove-one.
    - Unit: as fixed by the plan that built the event (example or client).
    - Not protected: anything released but missing from ``event``.
    - Gaussian-only events are accounted in the canonical form of the module docstring.

    Example:
      >>> from fedpriv.privacy.events import dp_fedavg_event
      >>> event = dp_fedavg_event(noise_multiplier=2.0, client_sampling_rate=1.0, rounds=100)
      >>> delta_for(event, epsilon=35.0818, accountant="rdp") <= 1e-5
      True
    """
    epsilon = _validation.check_epsilon(epsilon)
    return float(_composed(event, accountant).get_delta(epsilon))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyReport:
    """The privacy statement of one run, for ``metrics.json``.

    Attributes:
      unit: the privacy unit, ``"example"`` (a record of one hospital) or ``"client"``
        (a whole hospital).
      relation: the neighbouring relation, always ``"add_remove_one"``.
      delta: the delta both epsilons are stated at, in (0, 1).
      epsilon_rdp: epsilon from the RDP accountant (``inf`` without noise).
      epsilon_pld: epsilon from the PLD accountant (``inf`` without noise).
      noise_multiplier: noise stddev / sensitivity of the released sum.
      sampling_rate: Poisson sampling rate of the unit per step, in (0, 1].
      steps: number of composed releases.
      rdp_orders: which RDP orders were used (a description).
      rdp_optimal_order: the order that gave ``epsilon_rdp`` (at an end of the order
        range, the orders should be widened).
      pld_value_discretization_interval: the PLD grid step.
      dp_accounting_version: the version of ``dp_accounting`` that computed the numbers.

    **Formal guarantees**

    - Bound: the run is ``(min(epsilon_rdp, epsilon_pld), delta)``-DP (both are valid
      upper bounds; :attr:`epsilon` is their minimum, which is the PLD value, and
      :attr:`accountant` names the accountant it came from).
    - Relation: add/remove-one.
    - Unit: :attr:`unit`.
    - Not protected: anything not described by ``noise_multiplier``, ``sampling_rate``
      and ``steps`` -- e.g. hyper-parameter tuning on the private data, non-Poisson
      batching, several records of the same patient (when the unit is an example).
    """

    unit: str
    relation: str = "add_remove_one"
    delta: float
    epsilon_rdp: float
    epsilon_pld: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    rdp_orders: str = dataclasses.field(default_factory=_rdp_summary)
    rdp_optimal_order: float = math.nan
    pld_value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL
    dp_accounting_version: str = dataclasses.field(default_factory=_dp_accounting_version)

    def __post_init__(self):
        _validation.check_choice(self.unit, "unit", UNITS)
        _validation.check_choice(self.relation, "relation", RELATIONS)
        _validation.check_delta(self.delta)
        _validation.check_noise_multiplier(self.noise_multiplier)
        _validation.check_sampling_rate(self.sampling_rate)
        _validation.check_steps(self.steps)
        for name in ("epsilon_rdp", "epsilon_pld"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (inf allowed), got {value!r}")

    @property
    def epsilon(self) -> float:
        """The tightest valid epsilon: the minimum of the RDP and PLD bounds."""
        return min(self.epsilon_rdp, self.epsilon_pld)

    @property
    def accountant(self) -> str:
        """The accountant that gave :attr:`epsilon`: ``"pld"`` unless RDP was strictly tighter."""
        return "pld" if self.epsilon_pld <= self.epsilon_rdp else "rdp"

    def as_dict(self) -> dict[str, float | int | str]:
        """Flat, JSON-able ``{"privacy.<field>": value}`` for ``metrics.json``.

        Infinite epsilons stay ``float("inf")`` (Python's ``json`` writes ``Infinity``).
        Besides the fields: ``privacy.epsilon`` and ``privacy.accountant`` (which of the
        two accountants gave it).
        """
        flat = {f"privacy.{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}
        flat["privacy.epsilon"] = self.epsilon
        flat["privacy.accountant"] = self.accountant
        return {key: (float(value) if isinstance(value, float) else value) for key, value in flat.items()}


def sampled_gaussian_report(
    *, noise_multiplier: float, sampling_rate: float, steps: int, delta: float, unit: str
) -> PrivacyReport:
    """Accounts ``steps`` Poisson-sampled Gaussian releases with both accountants.

    Args:
      noise_multiplier: noise stddev / L2 sensitivity of the released sum, ``>= 0``.
      sampling_rate: Poisson sampling rate of the unit per step, in (0, 1].
      steps: number of releases, ``>= 1``.
      delta: target delta, in (0, 1).
      unit: ``"example"`` or ``"client"``.

    Returns:
      A :class:`PrivacyReport` holding the RDP and the PLD epsilon.

    Raises:
      ValueError: if an argument is outside its allowed range (before any compute).

    **Formal guarantees**

    - Bound: ``(report.epsilon, delta)``-DP for the unit, for the mechanism of
      :func:`fedpriv.privacy.dp_sgd_event`.
    - Relation: add/remove-one.
    - Unit: ``unit``.
    - Not protected: see :class:`PrivacyReport`.
    """
    delta = _validation.check_delta(delta)
    _validation.check_choice(unit, "unit", UNITS)
    event = events_lib.dp_sgd_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps)
    rdp = make_accountant("rdp").compose(event)
    epsilon_rdp, optimal_order = rdp.get_epsilon_and_optimal_order(delta)
    if noise_multiplier > 0 and optimal_order in (RDP_ORDERS[0], RDP_ORDERS[-1]):
        logger.warning("RDP optimal order %s is at the end of the order range; epsilon_rdp may be loose",
                       optimal_order)
    epsilon_pld = epsilon_for(event, delta=delta, accountant="pld")
    return PrivacyReport(
        unit=unit,
        delta=delta,
        epsilon_rdp=float(epsilon_rdp),
        epsilon_pld=float(epsilon_pld),
        noise_multiplier=float(noise_multiplier),
        sampling_rate=float(sampling_rate),
        steps=int(steps),
        rdp_optimal_order=float(optimal_order),
    )
