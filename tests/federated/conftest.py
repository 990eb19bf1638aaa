"""Small models and data for the federated tests (independent of the model zoo)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.models.base import from_linen
from fedpriv.typing import ClientData, Model


class TinyConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3, name="head")(x)


@pytest.fixture
def tiny_conv_model() -> Model:
    return from_linen(TinyConvNet(), input_shape=(8, 8, 1), num_classes=3, head_names=("head",),
                      name="tiny_conv")


def random_client_data(rng: np.random.Generator, *, clients, steps, batch, input_shape, num_classes,
                       pad_fraction=0.3, absent_clients=()):
    """Random data with random padding; padded slots hold garbage so a leak would show."""
    x = rng.normal(size=(clients, steps, batch, *input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, size=(clients, steps, batch)).astype(np.int32)
    mask = (rng.random((clients, steps, batch)) > pad_fraction).astype(np.float32)
    mask[:, :, 0] = 1.0
    client_mask = np.ones(clients, dtype=np.float32)
    for c in absent_clients:
        client_mask[c] = 0.0
        mask[c] = 0.0
    ids = np.where(mask > 0, np.arange(mask.size).reshape(mask.shape), -1).astype(np.int32)
    return ClientData(examples={"x": jnp.asarray(x), "y": jnp.asarray(y)},
                      example_mask=jnp.asarray(mask), client_mask=jnp.asarray(client_mask),
                      record_ids=jnp.asarray(ids))


def scalar_mean_model() -> Model:
    """Loss 0.5 * (w - x)^2 per example: local SGD can be followed by hand."""
    def per_example_loss(params, batch):
        return 0.5 * (params["w"] - batch["x"]) ** 2
    return Model(init=lambda key, x: {"w": jnp.float32(0.0)},
                 apply=lambda params, x: jnp.zeros((x.shape[0], 1)) + params["w"],
                 per_example_loss=per_example_loss, input_shape=(), num_classes=1,
                 head_names=(), name="scalar_mean")
