"""DP-SGD for one hospital's local training: the ONE place it is composed (DESIGN §4).

:class:`DPSGDPlan` holds the public parameters of the mechanism and yields everything
derived from them: the clipper, the noise transform sized from the clipped sum's
sensitivity, the private gradient, the ``dp_accounting`` event and the privacy report.
User code never computes a noise stddev.

The plan is a frozen, hashable Python object: close over it (or pass it as a static
argument) in jitted code. Only the noise state is a pytree that flows through ``jit``,
``vmap`` and ``scan``.

Sampling is the data layer's job: the accounting assumes every local step includes each
of the hospital's examples independently with probability ``sampling_rate`` (Poisson
sampling), marked in ``example_mask``, and that ``expected_batch_size`` is the public
constant ``sampling_rate * local_dataset_size``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import dp_accounting
import jax
import jax.numpy as jnp
import optax

from fedpriv.defenses import clipping
from fedpriv.defenses import noise as noise_lib
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import calibration
from fedpriv.privacy import events
from fedpriv.typing import Array, Params, PRNGKey


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPSGDPlan:
    """Example-level DP-SGD run by one hospital over the whole training.

    Each local step: clip every example's gradient to global L2 norm ``l2_clip_norm``,
    sum the real (sampled) examples, add ``N(0, (noise_multiplier * l2_clip_norm)^2)`` to
    every coordinate of the SUM, then divide by the public ``expected_batch_size``.

    Attributes:
      l2_clip_norm: the per-example clip norm ``C > 0``.
      noise_multiplier: noise stddev / sensitivity, ``>= 0`` (0 means no privacy,
        epsilon = inf; prefer ``defense: none`` for a non-private baseline).
      sampling_rate: Poisson sampling rate of an example per local step, in (0, 1].
      steps: every local DP-SGD step the hospital runs over the whole training
        (rounds it takes part in x local steps per round), ``>= 1``.
      expected_batch_size: ``sampling_rate * local_dataset_size``, a public constant
        ``> 0`` used as the divisor (dividing by the realised batch size would leak it).
      round_noise_multipliers: ``None`` (every step uses ``noise_multiplier``) or a noise
        schedule, one multiplier per round of ``steps / len(schedule)`` steps; the event
        composes the actual sequence (``noise_multiplier`` is then the first round's).

    Raises:
      ValueError: on construction, if a field is outside its allowed range; the message
        names the field, the value and what is allowed.

    **Formal guarantees**

    - Bound: if the hospital runs exactly ``steps`` steps of :meth:`private_gradient`
      on Poisson-sampled batches with rate ``sampling_rate``, everything it releases
      computed from those noisy gradients (updates, models; post-processing) is
      ``(epsilon, delta)``-DP with ``epsilon = report(delta).epsilon``.
    - Relation: add/remove-one example of the hospital's local dataset.
    - Unit: one example (record) of one hospital.
    - Not protected: a patient with several records (each record is a unit; group
      privacy scales the bound); the size of the local dataset (public here via
      ``expected_batch_size``); batching that is not Poisson sampling, or Poisson
      batches truncated to a padded capacity; hyper-parameters tuned on private data;
      anything released outside the DP-SGD steps (e.g. ``aux`` diagnostics, evaluation
      on private data); floating-point artefacts of the noise sampler.

    Example:
      >>> plan = DPSGDPlan(l2_clip_norm=1.0, noise_multiplier=1.1,
      ...                  sampling_rate=256 / 60000, steps=14062, expected_batch_size=256)
      >>> plan.noise_stddev
      1.1
      >>> round(plan.report(1e-5).epsilon_rdp, 4)
      2.5966

    References:
      Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv 1607.00133.
      Mironov, Talwar, Zhang 2019, arXiv 1908.10530 (sampled Gaussian RDP).
    """

    unit: ClassVar[str] = "example"

    l2_clip_norm: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    expected_batch_size: float
    round_noise_multipliers: tuple[float, ...] | None = None

    def __post_init__(self):
        # Normalised to plain Python numbers so the plan stays hashable (a static jit arg).
        checked = {
            "l2_clip_norm": _validation.check_positive(self.l2_clip_norm, "l2_clip_norm"),
            "noise_multiplier": _validation.check_noise_multiplier(self.noise_multiplier),
            "sampling_rate": _validation.check_sampling_rate(self.sampling_rate),
            "steps": _validation.check_steps(self.steps),
            "expected_batch_size": _validation.check_positive(self.expected_batch_size, "expected_batch_size"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.round_noise_multipliers is not None:
            schedule = tuple(_validation.check_noise_multiplier(value, "round_noise_multipliers")
                             for value in self.round_noise_multipliers)
            if not schedule or self.steps % len(schedule):
                raise ValueError(f"round_noise_multipliers must have one value per round, and steps ({self.steps}) "
                                 f"must be a multiple of the rounds ({len(schedule)})")
            object.__setattr__(self, "round_noise_multipliers", schedule)

    @property
    def steps_per_round(self) -> int:
        """Local DP-SGD steps per round (all ``steps`` when there is no schedule)."""
        return self.steps // len(self.round_noise_multipliers) if self.round_noise_multipliers else self.steps

    def noise_multiplier_in_round(self, round_index: int) -> float:
        """The noise multiplier of round ``round_index``: the schedule's, else the plan's."""
        if self.round_noise_multipliers is None:
            return self.noise_multiplier
        return self.round_noise_multipliers[round_index]

    @classmethod
    def calibrated(
        cls,
        *,
        target_epsilon: float,
        delta: float,
        l2_clip_norm: float,
        sampling_rate: float,
        steps: int,
        expected_batch_size: float,
        accountant: accountant_lib.AccountantName = "rdp",
    ) -> "DPSGDPlan":
        """The plan with the smallest noise multiplier meeting ``(target_epsilon, delta)``.

        Args:
          target_epsilon: privacy budget, finite and > 0.
          delta: target delta, in (0, 1).
          l2_clip_norm: per-example clip norm, > 0.
          sampling_rate: Poisson sampling rate per step, in (0, 1].
          steps: all local DP-SGD steps of the hospital over training, >= 1.
          expected_batch_size: public divisor, > 0.
          accountant: ``"rdp"`` or ``"pld"``, the accountant the budget is met under.

        Returns:
          A :class:`DPSGDPlan`.

        Raises:
          ValueError: if an argument is outside its allowed range (before any compute).

        **Formal guarantees**

        - Bound: ``plan.dp_event()`` is ``(target_epsilon, delta)``-DP under
          ``accountant`` (epsilon within 1 % below the target).
        - Relation, unit and what is not protected: as for :class:`DPSGDPlan`.
        """
        _validation.check_positive(l2_clip_norm, "l2_clip_norm")
        _validation.check_positive(expected_batch_size, "expected_batch_size")
        noise_multiplier = calibration.calibrate_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sampling_rate=sampling_rate, steps=steps,
            accountant=accountant)
        return cls(l2_clip_norm=l2_clip_norm, noise_multiplier=noise_multiplier, sampling_rate=sampling_rate,
                   steps=steps, expected_batch_size=expected_batch_size)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped sum under add/remove-one: ``l2_clip_norm``."""
        return self.l2_clip_norm

    @property
    def noise_stddev(self) -> float:
        """Per-coordinate noise stddev on the clipped sum: ``noise_multiplier * sensitivity``."""
        return self.noise_multiplier * self.sensitivity

    def clip(self, per_example_grads: Params) -> Params:
        """Clips each example to global L2 norm ``l2_clip_norm`` (see :func:`clip_per_example`).

        **Formal guarantees**

        - Bound: each example's contribution has L2 norm ``<= l2_clip_norm``; no DP alone.
        - Relation: add/remove-one example. Unit: one example.
        - Not protected: everything, until noise is added to the sum.
        """
        return clipping.clip_per_example(per_example_grads, self.l2_clip_norm)

    def noise(self, key: PRNGKey) -> optax.GradientTransformation:
        """The Gaussian noise transform with stddev :attr:`noise_stddev`, keyed by ``key``.

        For per-client states, vmap this (or :meth:`noise_state`) over split keys.

        **Formal guarantees**

        - Bound: applied once to the clipped sum, the Gaussian mechanism with noise
          multiplier ``noise_multiplier`` for one example; composition over ``steps`` is
          what :meth:`dp_event` accounts.
        - Relation: add/remove-one example. Unit: one example.
        - Not protected: noising anything other than the clipped sum; reusing a state.
        """
        return noise_lib.add_gaussian_noise(self.noise_stddev, key)

    def noise_state(self, key: PRNGKey) -> noise_lib.GaussianNoiseState:
        """The initial noise state for ``key`` (vmap over split keys for many clients)."""
        return noise_lib.GaussianNoiseState(key=key)

    def private_gradient(
        self,
        per_example_grads: Params,
        example_mask: Array,
        noise_state: noise_lib.GaussianNoiseState,
        noise_multiplier: Array | None = None,
        example_tiers: Array | None = None,
    ) -> tuple[Params, noise_lib.GaussianNoiseState, dict[str, Array]]:
        """One DP-SGD gradient: ``(clipped sum + noise) / expected_batch_size``.

        Args:
          per_example_grads: pytree with leaves ``[B, *param_shape]`` (e.g. from
            :func:`fedpriv.defenses.per_example_gradients`).
          example_mask: ``[B]``, non-zero for the examples Poisson-sampled into this step,
            0 for padding (padding contributes exactly 0).
          noise_state: the state from :meth:`noise_state` or ``noise(key).init(params)``.
          noise_multiplier: this step's noise multiplier (may be traced, so a schedule
            does not recompile); ``None`` means the plan's. Only the plan's own
            :meth:`noise_multiplier_in_round` values are covered by :meth:`dp_event`.

        Returns:
          ``(gradient, new_noise_state, aux)``: the private gradient (leaves
          ``[*param_shape]``), the next noise state, and non-private diagnostics
          ``{"fraction_clipped": [], "num_examples": []}``.

        **Formal guarantees**

        - Bound: ``gradient`` is one Poisson-sampled Gaussian release with noise
          multiplier ``noise_multiplier`` (sensitivity ``l2_clip_norm``, noise stddev
          ``noise_multiplier * l2_clip_norm`` on the sum); ``steps`` such calls, each
          with a fresh state from the previous call, are accounted by :meth:`dp_event`.
        - Relation: add/remove-one example. Unit: one example.
        - Not protected: ``aux`` (it reads the data without noise: keep it on the
          client); reusing a noise state.
        """
        summed, fraction_clipped = clipping.clipped_sum(per_example_grads, example_mask, self.l2_clip_norm)
        stddev = self.noise_stddev if noise_multiplier is None else noise_multiplier * self.sensitivity
        noised, new_noise_state = noise_lib._noised(summed, noise_state, stddev)
        gradient = jax.tree_util.tree_map(lambda leaf: leaf / jnp.asarray(self.expected_batch_size, leaf.dtype),
                                          noised)
        aux = {"fraction_clipped": fraction_clipped,
               "num_examples": jnp.sum(jnp.asarray(example_mask) != 0).astype(jnp.float32)}
        return gradient, new_noise_state, aux

    def dp_event(self) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of the whole run (see :func:`fedpriv.privacy.dp_sgd_event`).

        **Formal guarantees**

        - Bound: faithful to the run when the hospital makes exactly ``steps`` calls of
          :meth:`private_gradient` on Poisson-sampled batches.
        - Relation: add/remove-one example. Unit: one example.
        - Not protected: as for :class:`DPSGDPlan`.
        """
        if self.round_noise_multipliers is not None:
            return events.heterogeneous_event(self.round_noise_multipliers, self.sampling_rate,
                                              steps_per_round=self.steps_per_round)
        return events.dp_sgd_event(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate,
                                   steps=self.steps)

    def report(self, delta: float) -> accountant_lib.PrivacyReport:
        """The privacy report at ``delta``, with both the RDP and the PLD epsilon.

        Raises:
          ValueError: if ``delta`` is not in (0, 1).

        **Formal guarantees**

        - Bound: the run is ``(report.epsilon, delta)``-DP.
        - Relation: add/remove-one example. Unit: one example (``report.unit``).
        - Not protected: as for :class:`DPSGDPlan`.
        """
        if self.round_noise_multipliers is None:
            return accountant_lib.sampled_gaussian_report(
                noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, steps=self.steps,
                delta=delta, unit=self.unit)
        # A schedule: both accountants on the composed sequence; noise_multiplier is round 0's.
        event = self.dp_event()
        return accountant_lib.PrivacyReport(
            unit=self.unit, delta=delta,
            epsilon_rdp=accountant_lib.epsilon_for(event, delta=delta, accountant="rdp"),
            epsilon_pld=accountant_lib.epsilon_for(event, delta=delta, accountant="pld"),
            noise_multiplier=self.round_noise_multipliers[0], sampling_rate=self.sampling_rate, steps=self.steps)
