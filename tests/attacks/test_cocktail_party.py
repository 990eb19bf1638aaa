"""Cocktail Party Attack (Kariyappa et al. 2023, arXiv 2209.05578): ICA on an aggregated dense-layer update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from fedpriv.attacks import AttackCompilation, CocktailPartyConfig, PublicKnowledge
from fedpriv.attacks.cocktail_party import mixed_records, recover_by_ica
from fedpriv.models import make_model
from fedpriv.models.mlp import mlp
from fedpriv.typing import Observation, ProtocolMetadata
from tests.attacks.helpers import observe

SHAPE = (16, 16, 1)


def sparse_images(generator, count):
    """Independent, strongly super-Gaussian records: a pixel is lit with probability 0.1, at a
    uniform level (at 0.3 the pixels are close to Gaussian and FastICA falls to |corr| ~ 0.7)."""
    return (generator.random((count, *SHAPE)) * (generator.random((count, *SHAPE)) < 0.1)).astype(np.float32)


def matched_correlations(recovered, truth):
    """|Pearson correlation| of each true record with its reconstruction under the best assignment."""
    flat_recovered, flat_truth = recovered.reshape(len(recovered), -1), truth.reshape(len(truth), -1)
    correlation = np.abs(np.corrcoef(np.vstack([flat_recovered, flat_truth]))[:len(recovered), len(recovered):])
    rows, columns = scipy.optimize.linear_sum_assignment(-correlation)
    return correlation[rows, columns], flat_recovered[rows], flat_truth[columns]


def aggregate_of(observation):
    """What the server sees under secure aggregation: the sum of the updates, one row."""
    summed = jax.tree_util.tree_map(lambda u: jnp.sum(u, axis=0, keepdims=True), observation.updates)
    return dataclasses.replace(observation, updates=summed, aggregated=True,
                               metadata=dataclasses.replace(observation.metadata, client_ids=()))


def test_ica_unmixes_a_synthetic_aggregated_dense_gradient():
    generator = np.random.default_rng(0)
    hospitals, batch, units = 2, 3, 64
    inputs = sparse_images(generator, hospitals * batch).reshape(hospitals * batch, -1)
    # Each hospital sends its batch-mean gradient; ReLU leaves about half the units inactive.
    unit_gradients = generator.normal(size=(hospitals * batch, units)) * (generator.random((hospitals * batch, units))
                                                                          < 0.5) / batch
    kernel, bias = inputs.T @ unit_gradients, unit_gradients.sum(axis=0)
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=batch, learning_rate=1.0,
                                input_shape=SHAPE, num_classes=4, client_ids=())
    observation = Observation(params={}, updates={"dense_0": {"kernel": jnp.asarray(kernel[None]),
                                                              "bias": jnp.asarray(bias[None])}},
                              aggregated=True, round_index=0, metadata=metadata)
    reconstruction = recover_by_ica(observation, jax.random.key(0), layer="dense_0", victims=(0,),
                                    config=CocktailPartyConfig())
    # The rank rule finds the six records the aggregate mixes.
    assert reconstruction.inputs.shape == (1, 1, hospitals * batch, *SHAPE)
    correlations, recovered, truth = matched_correlations(reconstruction.inputs[0, 0], inputs)
    assert correlations.min() >= 0.99
    # The bias update fixes sign and scale: the records come back, not just their direction.
    relative_error = np.linalg.norm(recovered - truth, axis=1) / np.linalg.norm(truth, axis=1)
    assert relative_error.max() < 0.3


@pytest.fixture(scope="module")
def mlp_round():
    generator = np.random.default_rng(1)
    model = mlp(SHAPE, 4, hidden_sizes=(64,))
    params = model.init(jax.random.key(2), jnp.zeros((1, *SHAPE)))
    x = sparse_images(generator, 6).reshape(2, 1, 3, *SHAPE)
    y = generator.integers(0, 4, (2, 1, 3)).astype(np.int32)
    public = sparse_images(generator, 256)
    attack = CocktailPartyConfig().make(model, PublicKnowledge(compilation=AttackCompilation(), images=public))
    return attack, observe(model, params, x, y), x


def test_attack_through_the_protocol_on_a_secure_aggregate_of_mlp_updates(mlp_round):
    attack, observation, x = mlp_round
    assert attack.observes_aggregate and attack.kind == "images"
    aggregate = aggregate_of(observation)
    assert mixed_records(np.asarray(aggregate.updates["dense_0"]["kernel"][0]).T, 1e-4) == 6
    reconstruction = attack(aggregate, jax.random.key(3), victims=[0])
    assert reconstruction.inputs.shape == (1, 1, 6, *SHAPE) and reconstruction.victims == (0,)
    correlations, _, _ = matched_correlations(reconstruction.inputs[0, 0], x.reshape(6, *SHAPE))
    assert correlations.min() >= 0.95


@pytest.mark.slow  # another FastICA compilation (3 components): ~3 s on 2 loaded cores
def test_attack_on_each_hospitals_own_update(mlp_round):
    attack, observation, x = mlp_round
    reconstruction = attack(observation, jax.random.key(4), victims=[0, 1])
    assert reconstruction.inputs.shape == (2, 1, 3, *SHAPE)
    for victim in range(2):
        correlations, _, _ = matched_correlations(reconstruction.inputs[victim, 0], x[victim, 0])
        assert correlations.min() >= 0.95


def test_a_model_without_a_dense_input_layer_is_refused_before_compute():
    convnet = make_model("convnet", input_shape=SHAPE, num_classes=4, width=4)
    with pytest.raises(ValueError, match=r"attack cocktail_party .*model 'convnet'"):
        CocktailPartyConfig().make(convnet, PublicKnowledge(compilation=AttackCompilation()))
    with pytest.raises(ValueError, match=r"'head' as such layer"):
        CocktailPartyConfig(layer="head").make(mlp(SHAPE, 4, hidden_sizes=(8,)),
                                               PublicKnowledge(compilation=AttackCompilation()))


@pytest.mark.parametrize("field, value", [("components", 0), ("rank_tolerance", 1.5), ("iterations", 0),
                                          ("tolerance", -1.0), ("layer", "")])
def test_bad_config_names_the_yaml_field(field, value):
    with pytest.raises(ValueError, match=rf"attack\.config\.{field}"):
        CocktailPartyConfig(**{field: value})
