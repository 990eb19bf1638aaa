"""Rematerialised local steps (jax.checkpoint) give the same update and the same input gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.federated import LocalTrainingConfig, make_client_update
from tests.federated.conftest import random_client_data


@pytest.mark.slow  # 34 s under xdist
def test_rematerialized_multistep_update_and_its_input_gradient_match(tiny_conv_model):
    data = random_client_data(np.random.default_rng(0), clients=1, steps=3, batch=2, input_shape=(8, 8, 1),
                              num_classes=3, pad_fraction=0.0)
    params = tiny_conv_model.init(jax.random.key(0), data.examples["x"][0, 0])
    x, y, mask = data.examples["x"][0], data.examples["y"][0], data.example_mask[0]

    def matching(config):
        update_fn = make_client_update(tiny_conv_model, config)

        def objective(inputs):
            update, _ = update_fn(params, {"x": inputs, "y": y}, mask, jax.random.key(1))
            return sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(update))
        return jax.value_and_grad(objective)(x)

    for optimizer in ("adam",):  # local Adam: the hardest case (its second moments are rematerialised too)
        plain = matching(LocalTrainingConfig(learning_rate=0.1, optimizer=optimizer))
        remat = matching(LocalTrainingConfig(learning_rate=0.1, optimizer=optimizer, rematerialize=True))
        np.testing.assert_allclose(remat[0], plain[0], rtol=1e-5)
        np.testing.assert_allclose(remat[1], plain[1], rtol=1e-4, atol=1e-7)
