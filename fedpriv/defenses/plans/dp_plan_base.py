"""What every DP plan of a run shares: public aggregation weights and the refusals they imply.

Under any DP plan the server's aggregation weights are public constants (uniform over the
hospitals that take part). A realised sample count is a function of the private data that
no noise covers: weighting by it makes the released model move with whether a record was
sampled, and drops the noisy update of a hospital that sampled none. Which hospitals take
part is public (the client sampler and the hospitals' model screening never read records).
"""

from __future__ import annotations

import jax.numpy as jnp

from fedpriv.defenses.plans.protocol import Composition, refuse
from fedpriv.privacy import _validation
from fedpriv.privacy import accountant as accountant_lib
from fedpriv.typing import Array


def check_gaussian_settings(config) -> None:
    """Validates the fields a calibrated Gaussian plan's config shares (clip norm, optional noise
    multiplier, target epsilon, delta, accountant), each error naming its field."""
    _validation.check_positive(config.l2_clip_norm, "l2_clip_norm")
    if config.noise_multiplier is not None:
        _validation.check_noise_multiplier(config.noise_multiplier)
    _validation.check_epsilon(config.target_epsilon, "target_epsilon")
    _validation.check_delta(config.delta)
    _validation.check_choice(config.accountant, "accountant", accountant_lib.ACCOUNTANTS)


class PublicWeightsMixin:
    """Uniform weights over participants; refuses ``weighting='examples'`` (see module)."""

    name: str

    def aggregation_weights(self, weighting: str, client_mask: Array, realised_examples: Array) -> Array:
        del weighting, realised_examples  # never read: only public constants weight a DP release
        return jnp.asarray(client_mask, jnp.float32)

    def check_public_weighting(self, composition: Composition) -> None:
        if composition.weighting != "uniform":
            raise refuse(self.name, f"algorithm.weighting={composition.weighting!r}",
                         "the realised number of sampled records is private and unnoised; under DP the "
                         "aggregation weights must be public constants (use algorithm.weighting=uniform)")


def check_ledger_composition(plan_name: str, composition: Composition, *, ledger_keys: tuple[str, ...]) -> None:
    """Refuses ``stop_on_budget`` or ``audit_log`` for a plan whose releases no ledger can record."""
    if not ledger_keys and composition.stop_on_budget:
        raise refuse(plan_name, "privacy.stop_on_budget", "its releases are not Gaussian rounds a privacy ledger "
                     "composes")
    if not ledger_keys and composition.audit_log:
        raise refuse(plan_name, "defense.audit_log", "its releases are not Gaussian rounds the audit log replays")
