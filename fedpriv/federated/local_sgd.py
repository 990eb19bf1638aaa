"""The client function: local SGD on one hospital's padded data.

This one function is what clients run in training and what attacks differentiate
through (DESIGN §3.5), so attacking FedSGD and multi-step FedAvg is one code path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedpriv.typing import Batch, Model, Params

LOCAL_STEP_LOOPS = ("unroll", "scan")
LOCAL_OPTIMIZERS = ("sgd", "adam")



@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClientReport:
    """What a hospital computes beside the update it sends (per client: leading axis ``[C]``).

    None of it is sent: under DP the realised count is private and unnoised, so only a
    plan without DP may weight by it (``fedpriv.defenses.plans``).

    Attributes:
      num_examples: real examples the client processed this round.
      fraction_clipped: share of its DP-SGD examples whose gradient was clipped (0 without DP).
      kept_update: the update of the layers the hospital keeps (model partitioning's private
        head), applied by the hospital itself; ``{}`` when nothing is kept.
    """

    num_examples: jax.Array
    fraction_clipped: jax.Array
    kept_update: Params = dataclasses.field(default_factory=dict)


# client_update(params, examples {"x": [S, B, ...], "y": [S, B]}, example_mask [S, B], key,
#               noise_multiplier=None) -> (update = local_params - params, ClientReport)
ClientUpdate = Callable[..., tuple[Params, ClientReport]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalTrainingConfig:
    """What each client does in a round (public protocol facts).

    Attributes:
      learning_rate: local learning rate. FedSGD uses SGD with 1.0 and one step, so the
        update is exactly minus the batch gradient.
      momentum: local SGD momentum; ``None`` is plain SGD (ignored by Adam).
      optimizer: ``"sgd"`` or ``"adam"`` (fresh state every round, as in FedAvg with a
        local adaptive optimizer).
      step_loop: how local steps are compiled: ``"unroll"`` (a Python loop traced into
        one program; fastest for convolutions on XLA's CPU backend, DESIGN §5) or
        ``"scan"`` (``lax.scan``; smaller programs, better for many steps or GPUs).
      rematerialize: recompute each local step's activations in the backward pass
        (``jax.checkpoint``) instead of storing them. Attacks that differentiate through
        many local steps use it to bound memory; the numbers are the same.
    """

    learning_rate: float
    momentum: float | None = None
    optimizer: str = "sgd"
    step_loop: str = "unroll"
    rematerialize: bool = False

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) or None, got {self.momentum!r}")
        if self.optimizer not in LOCAL_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {LOCAL_OPTIMIZERS}, got {self.optimizer!r}")
        if self.step_loop not in LOCAL_STEP_LOOPS:
            raise ValueError(f"step_loop must be one of {LOCAL_STEP_LOOPS}, got {self.step_loop!r}")


def masked_mean_loss(model: Model, params: Params, batch: Batch, mask: jax.Array) -> jax.Array:
    """Mean per-example loss over the real examples; padding contributes exactly zero."""
    losses = model.per_example_loss(params, batch)
    return jnp.sum(jnp.where(mask > 0, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def make_client_update(model: Model, config: LocalTrainingConfig, dp_plan: Any = None) -> ClientUpdate:
    """Builds the pure client function for ``model`` under ``config``.

    Without DP, a step whose examples are all padding leaves the params unchanged, so a
    client with fewer real steps than the round's padded ``S`` is exactly unaffected.
    With a DP plan (``fedpriv.defenses.DPSGDPlan``) every step is a real DP-SGD step:
    per-example gradients are clipped, summed over the Poisson-sampled examples, noised
    by the plan and divided by its public expected batch size; an empty sample still
    releases noise, as the accountant assumes.

    Args:
      model: the model.
      config: local training protocol.
      dp_plan: ``None`` or a DP-SGD plan exposing ``noise(key)`` and
        ``private_gradient(per_example_grads, mask, noise_state)``.

    Returns:
      ``client_update(params, examples, example_mask, key, noise_multiplier=None) ->
      (update, ClientReport)``; ``noise_multiplier`` is this round's value of the plan's noise
      schedule (a traced scalar, so schedules never recompile), ignored without DP.
    """
    if config.optimizer == "adam":
        # eps_root keeps d sqrt(v)/dv finite where a gradient coordinate is zero, so attacks
        # can differentiate through local Adam steps (1e-16 is far below eps = 1e-8).
        optimizer = optax.adam(config.learning_rate, eps_root=1e-16)
    else:
        optimizer = optax.sgd(config.learning_rate, momentum=config.momentum)

    if dp_plan is None:
        def step_gradient(params, batch, mask, noise_state, noise_multiplier):
            gradient = jax.grad(lambda p: masked_mean_loss(model, p, batch, mask))(params)
            return gradient, noise_state, jnp.float32(0.0)
    else:
        from fedpriv.defenses import per_example_gradients  # defenses sit beside federated

        def step_gradient(params, batch, mask, noise_state, noise_multiplier):
            grads = per_example_gradients(model.per_example_loss, params, batch)
            # Tiered mechanisms clip or sample each record by its tier; plain DP-SGD ignores tiers.
            gradient, noise_state, aux = dp_plan.private_gradient(grads, mask, noise_state, noise_multiplier,
                                                                  example_tiers=batch.get("tier"))
            return gradient, noise_state, aux["fraction_clipped"]

    def local_step(carry, step_inputs, noise_multiplier):
        params, optimizer_state, noise_state = carry
        batch, mask = step_inputs
        gradient, new_noise_state, fraction_clipped = step_gradient(params, batch, mask, noise_state,
                                                                    noise_multiplier)
        updates, new_optimizer_state = optimizer.update(gradient, optimizer_state, params)
        new_params = optax.apply_updates(params, updates)
        active = jnp.logical_or(dp_plan is not None, jnp.any(mask > 0))
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(active, n, o), new, old)
        carry = (keep(new_params, params), keep(new_optimizer_state, optimizer_state), new_noise_state)
        return carry, fraction_clipped

    if config.rematerialize:
        local_step = jax.checkpoint(local_step)

    def client_update(params, examples, example_mask, key, noise_multiplier=None):
        noise_state = dp_plan.noise(key).init(params) if dp_plan is not None else ()
        carry = (params, optimizer.init(params), noise_state)
        if config.step_loop == "scan":
            carry, fractions = jax.lax.scan(lambda c, x: local_step(c, x, noise_multiplier), carry,
                                            (examples, example_mask))
        else:
            fractions = []
            for step in range(example_mask.shape[0]):
                batch = jax.tree_util.tree_map(lambda a: a[step], examples)
                carry, fraction = local_step(carry, (batch, example_mask[step]), noise_multiplier)
                fractions.append(fraction)
            fractions = jnp.stack(fractions)
        local_params = carry[0]
        update = jax.tree_util.tree_map(lambda new, old: new - old, local_params, params)
        return update, ClientReport(num_examples=jnp.sum(example_mask), fraction_clipped=jnp.mean(fractions))

    return client_update
