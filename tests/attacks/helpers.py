"""Builds honest observations for attack tests by running the real client function."""

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.federated import LocalTrainingConfig, for_each_client, make_client_update
from fedpriv.typing import ClientData, Observation, ProtocolMetadata


def observe(model, params, x, y, *, learning_rate=1.0, algorithm="fedsgd"):
    """Observation of clients holding ``x [C, S, B, ...]``, ``y [C, S, B]`` (no padding)."""
    clients, steps, batch = y.shape
    local = LocalTrainingConfig(learning_rate=learning_rate)
    run = for_each_client(make_client_update(model, local), "vmap")
    data = ClientData(examples={"x": jnp.asarray(x), "y": jnp.asarray(y)},
                      example_mask=jnp.ones((clients, steps, batch)), client_mask=jnp.ones(clients),
                      record_ids=jnp.zeros((clients, steps, batch), jnp.int32))
    updates, _ = jax.jit(run)(params, data, jax.random.split(jax.random.key(0), clients))
    metadata = ProtocolMetadata(algorithm=algorithm, local_steps=steps, batch_size=batch,
                                learning_rate=learning_rate, input_shape=model.input_shape,
                                num_classes=model.num_classes, client_ids=tuple(range(clients)))
    return Observation(params=params, updates=updates, aggregated=False, round_index=0, metadata=metadata)
