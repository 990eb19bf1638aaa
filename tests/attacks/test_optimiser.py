"""The shared optimiser: every way of compiling the candidates and the iterations gives
the same numbers (issue #10), checked on a problem with a closed-form path."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.attacks import AttackCompilation
from fedpriv.attacks._optimiser import make_runner, run_candidates

LEARNING_RATE = 0.1


def _step(state, candidate, shared):
    """Gradient descent on 0.5 * shared * ||x - target||^2 through optax."""
    variables, optimizer_state = state
    value = 0.5 * shared * jnp.sum((variables - candidate) ** 2)
    gradient = shared * (variables - candidate)
    updates, optimizer_state = optax.sgd(LEARNING_RATE).update(gradient, optimizer_state, variables)
    return (optax.apply_updates(variables, updates), optimizer_state), value


@pytest.mark.parametrize("loop", ["host", "scan"])
@pytest.mark.parametrize("batching", ["vmap", "map", "loop"])
def test_every_compilation_follows_the_closed_form(loop, batching):
    compilation = AttackCompilation(loop=loop, batching=batching, scan_chunk=3)
    start = np.array([[1.0, -2.0], [0.5, 4.0], [3.0, 3.0]], np.float32)
    targets = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]], np.float32)
    curvature, iterations = 2.0, 7  # 7 = two full scan chunks and a short one
    final, values = run_candidates(make_runner(_step, compilation), optax.sgd(LEARNING_RATE).init, start, targets,
                                   curvature, iterations, compilation)
    # x_t - target = (1 - lr * curvature)^t (x_0 - target), for every candidate on its own.
    contraction = 1.0 - LEARNING_RATE * curvature
    np.testing.assert_allclose(final, targets + contraction ** iterations * (start - targets), rtol=1e-5)
    expected_values = [0.5 * curvature * contraction ** (2 * t) * np.sum((start - targets) ** 2, axis=1)
                       for t in range(iterations)]
    np.testing.assert_allclose(values, np.stack(expected_values), rtol=1e-5)
    assert values.shape == (iterations, 3)
