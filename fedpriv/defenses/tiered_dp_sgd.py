"""DP-SGD with sensitivity tiers: each tier of records gets its own privacy budget.

Records of a hospital fall into tiers promised different budgets (e.g. general care,
mental health, substance use, genomic data: 42 CFR Part 2 and genetic-privacy laws ask
more for the latter). Individualized DP-SGD (Boenisch et al. 2023) meets every tier's
budget inside ONE training run in one of two ways:

- ``"scale"``: one noise stddev ``s`` on the clipped sum, and a clip norm per tier,
  ``C_t = s / sigma_t``, where ``sigma_t`` is the noise multiplier tier ``t``'s budget
  needs. The loosest tier keeps the base clip norm; stricter tiers are clipped harder,
  so their records move the model less.
- ``"sample"``: one clip norm and one noise multiplier ``sigma``, and a Poisson
  sampling rate per tier, ``q_t``, the largest rate at which ``sigma`` meets tier
  ``t``'s budget. The loosest tier keeps the base rate; stricter tiers are sampled less
  often. The data layer draws each record with its tier's rate
  (``build_round_data(..., sampling_rate=per_record_rates)``).

Like :class:`DPSGDPlan`, the plan is the ONE place the mechanism is composed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.defenses import clipping
from fedpriv.defenses import noise as noise_lib
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import calibration
from fedpriv.privacy import events
from fedpriv.typing import Array, Params, PRNGKey

TIER_METHODS = ("scale", "sample")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TieredDPSGDPlan:
    """Example-level DP-SGD whose records are split into tiers with their own budgets.

    Build it with :meth:`calibrated`; the fields are the calibrated mechanism.

    Attributes:
      tier_names: the tiers, in the order of the integer tier ids records carry.
      budgets: each tier's target epsilon (at ``delta``).
      delta: the delta of every tier.
      method: ``"scale"`` or ``"sample"`` (see the module docstring).
      clip_norms: per-tier L2 clip norm (all equal under ``"sample"``).
      noise_stddev: stddev of the Gaussian noise on every coordinate of the clipped sum.
      sampling_rates: per-tier Poisson sampling rate (all equal under ``"scale"``).
      steps: local DP-SGD steps over the whole training.
      expected_batch_size: public divisor of the noised sum.

    **Formal guarantees**

    - Bound: a record of tier ``t`` enjoys ``(budgets[t], delta)``-DP (``report`` gives
      the accounted epsilon of each tier, at most its budget) if exactly ``steps``
      steps run with records Poisson-sampled at their tier's rate.
    - Relation: add/remove-one record of the tier.
    - Unit: one record of one hospital, per tier.
    - Not protected: tier membership (assumed public, e.g. set by the record's codes);
      a person with records in several tiers (each record is a unit); everything a
      plain :class:`fedpriv.defenses.DPSGDPlan` leaves unprotected.

    References:
      Boenisch, Muehl, Dziedzic, Rinberg, Papernot 2023, "Have it your way: Individualized
      Privacy Assignment for DP-SGD", arXiv 2303.17046 (Sample and Scale).
    """

    unit: ClassVar[str] = "example"

    tier_names: tuple[str, ...]
    budgets: tuple[float, ...]
    delta: float
    method: str
    clip_norms: tuple[float, ...]
    noise_stddev: float
    sampling_rates: tuple[float, ...]
    steps: int
    expected_batch_size: float

    def __post_init__(self):
        _validation.check_choice(self.method, "method", TIER_METHODS)
        count = len(self.tier_names)
        for name in ("budgets", "clip_norms", "sampling_rates"):
            if len(getattr(self, name)) != count:
                raise ValueError(f"{name} must have one value per tier ({count}), got {getattr(self, name)!r}")
        _validation.check_delta(self.delta)
        _validation.check_noise_multiplier(self.noise_stddev, "noise_stddev")
        _validation.check_steps(self.steps)
        _validation.check_positive(self.expected_batch_size, "expected_batch_size")
        for tier, clip, rate in zip(self.tier_names, self.clip_norms, self.sampling_rates):
            _validation.check_positive(clip, f"clip_norms[{tier!r}]")
            _validation.check_sampling_rate(rate, f"sampling_rates[{tier!r}]")

    @classmethod
    def calibrated(cls, *, budgets: Mapping[str, float], delta: float, method: str, l2_clip_norm: float,
                   sampling_rate: float, steps: int, expected_batch_size: float,
                   accountant: accountant_lib.AccountantName = "rdp") -> "TieredDPSGDPlan":
        """Calibrates every tier to its budget; the loosest tier keeps the base clip and rate.

        Args:
          budgets: ``{tier: target epsilon}``; every tier must have one (order = tier ids).
          delta: delta for every tier, in (0, 1).
          method: ``"scale"`` or ``"sample"``.
          l2_clip_norm: the base (loosest tier's) clip norm, > 0.
          sampling_rate: the base (loosest tier's) Poisson rate, in (0, 1].
          steps: local DP-SGD steps over training, >= 1.
          expected_batch_size: public divisor, > 0.
          accountant: ``"rdp"`` or ``"pld"``.

        Raises:
          ValueError: a tier without a budget, a non-positive budget, or any field out of
            range, before any compute.

        **Formal guarantees**

        - Bound: every tier's event is ``(budgets[t], delta)``-DP under ``accountant``;
          stricter tiers never get less protection (a smaller clip or rate).
        - Relation, unit, not protected: as for :class:`TieredDPSGDPlan`.
        """
        method = _validation.check_choice(method, "method", TIER_METHODS)
        tiers = events._tier_names(budgets, "budgets")
        targets = {tier: _validation.check_epsilon(budgets[tier], f"budgets[{tier!r}]") for tier in tiers}
        l2_clip_norm = _validation.check_positive(l2_clip_norm, "l2_clip_norm")
        sampling_rate = _validation.check_sampling_rate(sampling_rate)
        steps = _validation.check_steps(steps)
        loosest = max(tiers, key=lambda tier: targets[tier])
        if method == "scale":
            sigmas = calibration.calibrate_tiers(budgets=targets, delta=delta, sampling_rates=sampling_rate,
                                                 steps=steps, accountant=accountant)
            noise_stddev = sigmas[loosest] * l2_clip_norm
            clip_norms = tuple(min(l2_clip_norm, noise_stddev / sigmas[tier]) for tier in tiers)
            rates = (sampling_rate,) * len(tiers)
        else:
            sigma = calibration.calibrate_noise_multiplier(target_epsilon=targets[loosest], delta=delta,
                                                           sampling_rate=sampling_rate, steps=steps,
                                                           accountant=accountant)
            noise_stddev = sigma * l2_clip_norm
            clip_norms = (l2_clip_norm,) * len(tiers)
            rates = tuple(sampling_rate if targets[tier] >= targets[loosest] else
                          _largest_rate(sigma, targets[tier], delta, steps, sampling_rate, accountant)
                          for tier in tiers)
        return cls(tier_names=tiers, budgets=tuple(targets[tier] for tier in tiers), delta=delta, method=method,
                   clip_norms=clip_norms, noise_stddev=noise_stddev, sampling_rates=rates, steps=steps,
                   expected_batch_size=expected_batch_size)

    @property
    def noise_multipliers(self) -> tuple[float, ...]:
        """Each tier's effective noise multiplier: ``noise_stddev / clip_norms[t]``."""
        return tuple(self.noise_stddev / clip for clip in self.clip_norms)

    @property
    def steps_per_round(self) -> int:
        return self.steps

    def noise_multiplier_in_round(self, round_index: int) -> float:
        """The loosest tier's noise multiplier (tiered plans have no schedule)."""
        return min(self.noise_multipliers)

    def record_sampling_rates(self, record_tiers: np.ndarray) -> np.ndarray:
        """``[N]`` Poisson rate of each record from its tier id (for the data layer)."""
        record_tiers = np.asarray(record_tiers)
        if record_tiers.size and (record_tiers.min() < 0 or record_tiers.max() >= len(self.tier_names)):
            raise ValueError(f"record tiers must lie in [0, {len(self.tier_names) - 1}] "
                             f"(tiers {self.tier_names}), got values in [{record_tiers.min()}, {record_tiers.max()}]")
        return np.asarray(self.sampling_rates)[record_tiers]

    def noise(self, key: PRNGKey) -> optax.GradientTransformation:
        return noise_lib.add_gaussian_noise(self.noise_stddev, key)

    def private_gradient(self, per_example_grads: Params, example_mask: Array,
                         noise_state: noise_lib.GaussianNoiseState, noise_multiplier: Array | None = None, *,
                         example_tiers: Array | None) -> tuple[Params, noise_lib.GaussianNoiseState, dict[str, Array]]:
        """One tiered DP-SGD gradient: each example clipped to its tier's norm, summed, noised.

        ``noise_multiplier`` is ignored: the noise stddev is the plan's (tiers have no
        schedule).

        **Formal guarantees**

        - Bound: one Poisson-sampled Gaussian release per tier with noise multiplier
          ``noise_stddev / clip_norms[t]`` for a record of tier ``t``.
        - Relation: add/remove-one record of the tier. Unit: one record.
        - Not protected: ``aux``; reusing a noise state.
        """
        if example_tiers is None:
            raise ValueError("a tiered DP plan needs each record's tier id: build the round data with record_tiers "
                             "so examples carry a 'tier' entry")
        clip_per_example = jnp.asarray(self.clip_norms, jnp.float32)[example_tiers]
        norms = clipping.per_example_global_norms(per_example_grads)
        factors = jnp.minimum(1.0, clip_per_example / jnp.maximum(norms, 1e-12))
        weights = factors * (jnp.asarray(example_mask) != 0)

        def weighted_sum(leaf):
            return jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1)

        summed = jax.tree_util.tree_map(weighted_sum, per_example_grads)
        noised, new_noise_state = noise_lib._noised(summed, noise_state, self.noise_stddev)
        gradient = jax.tree_util.tree_map(lambda leaf: leaf / jnp.asarray(self.expected_batch_size, leaf.dtype),
                                          noised)
        real = jnp.asarray(example_mask) != 0
        aux = {"fraction_clipped": jnp.sum(jnp.where(real, norms > clip_per_example, False))
               / jnp.maximum(jnp.sum(real), 1),
               "num_examples": jnp.sum(real).astype(jnp.float32)}
        return gradient, new_noise_state, aux

    def tier_dp_events(self) -> dict[str, dp_accounting.DpEvent]:
        """One ``dp_accounting`` event per tier."""
        return events.tier_events(noise_multipliers=dict(zip(self.tier_names, self.noise_multipliers)),
                                  sampling_rates=dict(zip(self.tier_names, self.sampling_rates)), steps=self.steps)

    def dp_event(self) -> dp_accounting.DpEvent:
        """The event of the most exposed tier (the largest epsilon among the tiers)."""
        reports = self.tier_reports(self.delta)
        worst = max(reports, key=lambda tier: reports[tier].epsilon)
        return self.tier_dp_events()[worst]

    def tier_reports(self, delta: float) -> dict[str, accountant_lib.PrivacyReport]:
        """``{tier: PrivacyReport}`` at ``delta``, each with RDP and PLD epsilon."""
        return {tier: accountant_lib.sampled_gaussian_report(
            noise_multiplier=sigma, sampling_rate=rate, steps=self.steps, delta=delta, unit=self.unit)
            for tier, sigma, rate in zip(self.tier_names, self.noise_multipliers, self.sampling_rates)}

    def report(self, delta: float) -> accountant_lib.PrivacyReport:
        """The report of the most exposed tier (per-tier numbers: :meth:`tier_reports`)."""
        reports = self.tier_reports(delta)
        return max(reports.values(), key=lambda report: report.epsilon)


def _largest_rate(sigma: float, target_epsilon: float, delta: float, steps: int, upper: float,
                  accountant: accountant_lib.AccountantName) -> float:
    """The largest Poisson rate in (0, upper] at which ``sigma`` meets ``target_epsilon``."""
    def epsilon_at(rate):
        return accountant_lib.epsilon_for(events.dp_sgd_event(noise_multiplier=sigma, sampling_rate=rate,
                                                              steps=steps), delta=delta, accountant=accountant)
    low, high = 0.0, upper
    if epsilon_at(upper) <= target_epsilon:
        return upper
    for _ in range(24):  # bisection to a relative width of ~6e-8
        middle = 0.5 * (low + high)
        if epsilon_at(middle) <= target_epsilon:
            low = middle
        else:
            high = middle
    if low <= 0.0:
        raise ValueError(f"no sampling rate lets noise multiplier {sigma:.4g} meet epsilon {target_epsilon} "
                         f"over {steps} steps; give that tier a larger budget or use method='scale'")
    return low
