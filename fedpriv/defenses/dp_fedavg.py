"""DP-FedAvg (client-level DP): the ONE place it is composed (DESIGN §4).

:class:`DPFedAvgPlan` couples the three parts of McMahan et al.'s mechanism so they
cannot drift apart: Poisson sampling of clients with rate ``client_sampling_rate``,
clipping of each client's whole update to ``l2_clip_norm``, and Gaussian noise on the
SUM of the clipped updates sized from that clip, divided afterwards by the public
expected cohort size ``client_sampling_rate * num_clients``. It also yields the
``dp_accounting`` event with the client as the privacy unit.

Where the noise is added decides who it protects. Here the server adds it after
aggregation (central DP): the released model and everything computed from it are
client-level DP, but an honest-but-curious server that sees each client's clipped
update (plaintext aggregation) is not kept from them; under secure aggregation it sees
only the clipped sum.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import dp_accounting
import jax
import jax.numpy as jnp

from fedpriv.defenses import clipping
from fedpriv.defenses import noise as noise_lib
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.privacy import calibration
from fedpriv.privacy import events
from fedpriv.typing import Array, Params, PRNGKey


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPFedAvgPlan:
    """Client-level DP-FedAvg over the whole training.

    Each round: every client takes part independently with probability
    ``client_sampling_rate``; each participant's update is clipped to global L2 norm
    ``l2_clip_norm`` (non-finite updates count as zero and are reported); the server sums
    the clipped updates, adds ``N(0, (noise_multiplier * l2_clip_norm)^2)`` to every
    coordinate of the SUM and divides by ``expected_clients_per_round``.

    Attributes:
      l2_clip_norm: clip norm ``C > 0`` of one client's whole update.
      noise_multiplier: noise stddev / ``C``, ``>= 0``.
      client_sampling_rate: Poisson sampling rate of a client per round, in (0, 1].
      rounds: rounds of training, ``>= 1``.
      expected_clients_per_round: ``client_sampling_rate * num_clients``, a public
        constant ``> 0`` used as the divisor.
      round_noise_multipliers: ``None`` or one multiplier per round (a noise schedule);
        the event composes the actual sequence.

    **Formal guarantees**

    - Bound: the sequence of noised aggregates (hence every global model, and anything
      computed from them) is ``(epsilon, delta)``-DP with
      ``epsilon = report(delta).epsilon``, if clients are Poisson-sampled with
      ``client_sampling_rate`` and exactly ``rounds`` rounds run.
    - Relation: add/remove-one client.
    - Unit: one client (a whole hospital, all of its records).
    - Not protected: the individual clipped updates seen by the server before it adds
      the noise (use secure aggregation or local DP against the server); which clients
      took part in a round; fixed-size cohorts instead of Poisson sampling; non-private
      diagnostics.

    Example:
      >>> plan = DPFedAvgPlan(l2_clip_norm=1.0, noise_multiplier=1.0, client_sampling_rate=1.0,
      ...                     rounds=100, expected_clients_per_round=10)
      >>> plan.noise_stddev
      1.0

    References:
      McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent
      Language Models", arXiv 1710.06963.
    """

    unit: ClassVar[str] = "client"

    l2_clip_norm: float
    noise_multiplier: float
    client_sampling_rate: float
    rounds: int
    expected_clients_per_round: float
    round_noise_multipliers: tuple[float, ...] | None = None

    def __post_init__(self):
        checked = {
            "l2_clip_norm": _validation.check_positive(self.l2_clip_norm, "l2_clip_norm"),
            "noise_multiplier": _validation.check_noise_multiplier(self.noise_multiplier),
            "client_sampling_rate": _validation.check_sampling_rate(self.client_sampling_rate,
                                                                    "client_sampling_rate"),
            "rounds": _validation.check_steps(self.rounds, "rounds"),
            "expected_clients_per_round": _validation.check_positive(self.expected_clients_per_round,
                                                                     "expected_clients_per_round"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.round_noise_multipliers is not None:
            schedule = tuple(_validation.check_noise_multiplier(value, "round_noise_multipliers")
                             for value in self.round_noise_multipliers)
            if len(schedule) != self.rounds:
                raise ValueError(f"round_noise_multipliers must have one value per round ({self.rounds}), "
                                 f"got {len(schedule)}")
            object.__setattr__(self, "round_noise_multipliers", schedule)

    @classmethod
    def calibrated(cls, *, target_epsilon: float, delta: float, l2_clip_norm: float, client_sampling_rate: float,
                   rounds: int, expected_clients_per_round: float,
                   accountant: accountant_lib.AccountantName = "rdp") -> "DPFedAvgPlan":
        """The plan with the smallest noise multiplier meeting ``(target_epsilon, delta)``.

        **Formal guarantees**

        - Bound: ``plan.dp_event()`` is ``(target_epsilon, delta)``-DP under ``accountant``.
        - Relation, unit, not protected: as for :class:`DPFedAvgPlan`.
        """
        _validation.check_positive(l2_clip_norm, "l2_clip_norm")
        _validation.check_positive(expected_clients_per_round, "expected_clients_per_round")
        noise_multiplier = calibration.calibrate_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sampling_rate=client_sampling_rate, steps=rounds,
            accountant=accountant)
        return cls(l2_clip_norm=l2_clip_norm, noise_multiplier=noise_multiplier,
                   client_sampling_rate=client_sampling_rate, rounds=rounds,
                   expected_clients_per_round=expected_clients_per_round)

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped sum under add/remove-one client: ``l2_clip_norm``."""
        return self.l2_clip_norm

    @property
    def noise_stddev(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def noise_multiplier_in_round(self, round_index: int) -> float:
        """The noise multiplier of round ``round_index``: the schedule's, else the plan's."""
        if self.round_noise_multipliers is None:
            return self.noise_multiplier
        return self.round_noise_multipliers[round_index]

    def clip_updates(self, updates: Params, client_mask: Array) -> tuple[Params, Array, dict[str, Array]]:
        """Clips every client's update (leaves ``[C, ...]``) and zeroes absent or non-finite ones.

        Returns:
          ``(clipped, kept_mask, aux)``: clipped updates (absent and non-finite clients all
          zero), the ``[C]`` mask of clients whose update counts, and diagnostics
          ``{"fraction_clipped", "num_nonfinite"}``.

        **Formal guarantees**

        - Bound: each client's clipped update has L2 norm ``<= l2_clip_norm``; no DP alone.
        - Relation: add/remove-one client. Unit: one client.
        - Not protected: everything, until :meth:`noised_mean` adds noise to the sum.
        """
        finite = _finite_per_client(updates)
        kept = jnp.logical_and(client_mask > 0, finite)
        safe = jax.tree_util.tree_map(
            lambda leaf: jnp.where(kept.reshape((-1,) + (1,) * (leaf.ndim - 1)), leaf, jnp.zeros_like(leaf)),
            updates)
        clipped = clipping.clip_per_example(safe, self.l2_clip_norm)
        norms = clipping.per_example_global_norms(safe)
        num_kept = jnp.maximum(jnp.sum(kept), 1)
        aux = {"fraction_clipped": jnp.sum(jnp.where(kept, norms > self.l2_clip_norm, False)) / num_kept,
               "num_nonfinite": jnp.sum(jnp.logical_and(client_mask > 0, jnp.logical_not(finite)))}
        return clipped, kept.astype(jnp.float32), aux

    def noised_mean(self, clipped_sum: Params, key: PRNGKey, noise_multiplier: Array | None = None) -> Params:
        """``(clipped_sum + N(0, (sigma C)^2 I)) / expected_clients_per_round``.

        Args:
          clipped_sum: the sum over clients of :meth:`clip_updates`' output.
          key: the round's server noise key (fresh every round).
          noise_multiplier: this round's multiplier (may be traced); ``None`` means the plan's.

        **Formal guarantees**

        - Bound: one Poisson-sampled Gaussian release of the round (noise multiplier
          ``noise_multiplier``, sensitivity ``l2_clip_norm``); :meth:`dp_event` composes
          ``rounds`` of them.
        - Relation: add/remove-one client. Unit: one client.
        - Not protected: reusing a key across rounds.
        """
        stddev = self.noise_stddev if noise_multiplier is None else noise_multiplier * self.sensitivity
        noised, _ = noise_lib._noised(clipped_sum, noise_lib.GaussianNoiseState(key=key), stddev)
        return jax.tree_util.tree_map(
            lambda leaf: leaf / jnp.asarray(self.expected_clients_per_round, leaf.dtype), noised)

    def noise_state(self, key: PRNGKey) -> noise_lib.GaussianNoiseState:
        """A fresh noise state (for audits through ``fedpriv.privacy`` canaries)."""
        return noise_lib.GaussianNoiseState(key=key)

    def private_gradient(self, client_updates: Params, client_mask: Array, noise_state: noise_lib.GaussianNoiseState,
                         noise_multiplier: Array | None = None) -> tuple[Params, noise_lib.GaussianNoiseState, dict]:
        """One round's release from per-client updates: clip, sum, noise, divide.

        The same mechanism as :meth:`clip_updates` followed by :meth:`noised_mean`, in the
        interface the white-box canary audit runs (clients in place of examples).

        **Formal guarantees**

        - Bound: one Poisson-sampled Gaussian release with noise multiplier
          ``noise_multiplier`` (sensitivity ``l2_clip_norm``).
        - Relation: add/remove-one client. Unit: one client.
        - Not protected: ``aux``; reusing a noise state.
        """
        clipped, kept, aux = self.clip_updates(client_updates, client_mask)
        summed = jax.tree_util.tree_map(lambda leaf: jnp.tensordot(kept.astype(leaf.dtype), leaf, axes=1), clipped)
        next_key, draw_key = jax.random.split(noise_state.key)
        release = self.noised_mean(summed, draw_key, noise_multiplier)
        return release, noise_lib.GaussianNoiseState(key=next_key), aux

    def dp_event(self) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of the whole run, client as the unit."""
        if self.round_noise_multipliers is not None:
            return events.heterogeneous_event(self.round_noise_multipliers, self.client_sampling_rate,
                                              steps_per_round=1)
        return events.dp_fedavg_event(noise_multiplier=self.noise_multiplier,
                                      client_sampling_rate=self.client_sampling_rate, rounds=self.rounds)

    def report(self, delta: float) -> accountant_lib.PrivacyReport:
        """The privacy report at ``delta`` (RDP and PLD epsilon), unit ``"client"``."""
        event = self.dp_event()
        first = self.noise_multiplier_in_round(0)
        return accountant_lib.PrivacyReport(
            unit=self.unit, delta=delta,
            epsilon_rdp=accountant_lib.epsilon_for(event, delta=delta, accountant="rdp"),
            epsilon_pld=accountant_lib.epsilon_for(event, delta=delta, accountant="pld"),
            noise_multiplier=first, sampling_rate=self.client_sampling_rate, steps=self.rounds)


def _finite_per_client(updates: Params) -> Array:
    """``[C]`` True where every coordinate of the client's update is finite."""
    leaves = jax.tree_util.tree_leaves(updates)
    finite = [jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves]
    return jnp.all(jnp.stack(finite), axis=0)
