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


def no_privacy(capacity: int = 1):
    """The plan of a run without DP (shuffled batches of ``capacity``)."""
    from fedpriv.defenses.plans import BatchSampling, NoPrivacy
    return NoPrivacy(batch_sampling=BatchSampling(kind="shuffle", capacity=capacity))


def dp_fedavg_plan(*, l2_clip_norm: float, noise_multiplier: float, num_clients: int, rounds: int = 1,
                   client_sampling_rate: float = 1.0):
    """A DP-FedAvg plan for ``num_clients`` hospitals of 4 records each."""
    from fedpriv.defenses.plans import DPFedAvgConfig, RunShape
    selection = "all" if client_sampling_rate == 1.0 else "poisson"
    shape = RunShape(rounds=rounds, local_steps=1, batch_size=1, hospital_sizes=(4,) * num_clients,
                     client_selection=selection, client_sampling_rate=client_sampling_rate)
    return DPFedAvgConfig(l2_clip_norm=l2_clip_norm, noise_multiplier=noise_multiplier, target_epsilon=1.0,
                          delta=1e-5).make(shape)


def run_one_round(model, data, *, pipeline=None, plan=None, backend="vmap", weighting="uniform",
                  learning_rate=0.1, client_stages=(), params=None):
    """One federated round of ``model`` on ``data`` through the real round function; its ``RoundOutcome``."""
    from fedpriv.defenses.server_stages import ServerPipeline
    from fedpriv.federated import (FederatedConfig, Federation, LocalTrainingConfig, init_server_state,
                                   initial_stage_states, make_round, make_server_optimizer)
    pipeline = ServerPipeline() if pipeline is None else pipeline
    plan = no_privacy(data.batch_size) if plan is None else plan
    config = FederatedConfig(algorithm="fedavg", rounds=1, clients_per_round=None, local_steps=data.local_steps,
                             batch_size=data.batch_size, local=LocalTrainingConfig(learning_rate=learning_rate),
                             backend=backend)
    federation = Federation(model=model, config=config, plan=plan, num_clients=data.num_clients,
                            client_stages=client_stages, pipeline=pipeline)
    optimizer = make_server_optimizer("sgd", 1.0)
    round_function = make_round(federation.client_update(), optimizer, backend=backend, pipeline=pipeline,
                                weights=plan.aggregation_weights, weighting=weighting)
    if params is None:
        params = model.init(jax.random.key(0), data.examples["x"][0, 0])
    return round_function(init_server_state(params, optimizer), data,
                          jax.random.split(jax.random.key(1), data.num_clients),
                          initial_stage_states(pipeline, jax.random.key(2)), plan.round_noise(0).traced())


def train_without_defenses(model, config, params, round_data, num_clients: int, observe_rounds=()):
    """``fedpriv.federated.train`` with no privacy plan and the plain server (seeds 1, 2, 3)."""
    from fedpriv.federated import Federation, TrainingKeys, train
    federation = Federation(model=model, config=config, plan=no_privacy(config.batch_size), num_clients=num_clients)
    return train(federation, params=params, data=round_data, observe_rounds=observe_rounds,
                 keys=TrainingKeys(sampling=jax.random.key(1), clients=jax.random.key(2), server=jax.random.key(3)))
