import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks import AttackCompilation, InvertingGradientsConfig, PublicKnowledge, invert_gradients
from fedpriv.attacks.inverting_gradients import PUBLIC_MEAN_JITTER
from fedpriv.models.base import from_linen
from tests.attacks.helpers import observe
from tests.federated.conftest import TinyConvNet


@pytest.fixture(scope="module")
def tiny_setup():
    model = from_linen(TinyConvNet(), input_shape=(8, 8, 1), num_classes=3, head_names=("head",), name="tiny")
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 1, 8, 8, 1)).astype(np.float32)
    y = np.array([[[0]], [[2]]], np.int32)
    return model, params, x, y, observe(model, params, x, y)


@pytest.mark.slow  # 18 s under xdist; one compilation per attack runs in the default run
def test_all_compilation_variants_give_the_same_reconstruction(tiny_setup):
    model, _, _, _, obs = tiny_setup
    config = InvertingGradientsConfig(iterations=40, restarts=2, tv_weight=1e-3)
    results = [invert_gradients(obs, model, config, jax.random.key(1), victims=[0, 1],
                                compilation=AttackCompilation(loop=loop, batching=batching, scan_chunk=16))
               for loop in ("host", "scan") for batching in ("loop", "vmap", "map")]
    for other in results[1:]:
        np.testing.assert_allclose(other.inputs, results[0].inputs, atol=1e-5)
        np.testing.assert_allclose(other.objective, results[0].objective, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(other.labels, results[0].labels)


def test_recovers_tiny_images_with_idlg_labels(tiny_setup):
    model, _, x, y, obs = tiny_setup
    config = InvertingGradientsConfig(iterations=200, restarts=2, tv_weight=0.0)
    result = invert_gradients(obs, model, config, jax.random.key(1), victims=[0, 1],
                              compilation=AttackCompilation(loop="scan", batching="vmap", scan_chunk=100))
    np.testing.assert_array_equal(result.labels, y)
    psnr = 10 * np.log10(1.0 / np.mean((result.inputs - x) ** 2))
    assert psnr > 40, psnr
    assert result.trace.shape == (2, 2, 20)
    assert np.all(result.trace[:, :, -1] < result.trace[:, :, 0])


def test_multi_step_fedavg_goes_through_the_same_client_function(tiny_setup):
    model, params, _, _, _ = tiny_setup
    rng = np.random.default_rng(3)
    x = rng.random((1, 3, 1, 8, 8, 1)).astype(np.float32)  # three local steps of one image
    y = np.array([[[0], [1], [2]]], np.int32)
    obs = observe(model, params, x, y, learning_rate=0.1, algorithm="fedavg")
    config = InvertingGradientsConfig(iterations=300, restarts=1, tv_weight=0.0, label_strategy="known")
    result = invert_gradients(obs, model, config, jax.random.key(2), victims=[0], labels=y,
                              compilation=AttackCompilation(loop="scan", batching="vmap", scan_chunk=150))
    mse_random = np.mean((rng.random(x.shape) - x) ** 2)
    assert np.mean((result.inputs - x) ** 2) < 0.1 * mse_random


def test_bad_inputs_fail_before_compute(tiny_setup):
    model, _, _, y, obs = tiny_setup
    config = InvertingGradientsConfig(iterations=1)
    with pytest.raises(ValueError, match="victims"):
        invert_gradients(obs, model, config, jax.random.key(0), victims=[5])
    with pytest.raises(ValueError, match="labels"):
        invert_gradients(obs, model, dataclasses.replace(config, label_strategy="known"), jax.random.key(0),
                         victims=[0])
    other = from_linen(TinyConvNet(), input_shape=(10, 10, 1), num_classes=3, head_names=("head",), name="o")
    with pytest.raises(ValueError, match="input_shape"):
        invert_gradients(obs, other, config, jax.random.key(0), victims=[0])
    with pytest.raises(ValueError, match="iterations"):
        InvertingGradientsConfig(iterations=0)
    with pytest.raises(ValueError, match="batching"):
        AttackCompilation(batching="pmap")


def test_second_attack_with_the_same_setting_does_not_recompile(tiny_setup):
    from fedpriv.attacks.inverting_gradients import _compiled_programs
    model, _, _, _, obs = tiny_setup
    config = InvertingGradientsConfig(iterations=3, restarts=1, tv_weight=1e-3)
    compilation = AttackCompilation(loop="host", batching="loop")
    invert_gradients(obs, model, config, jax.random.key(1), victims=[0], compilation=compilation)
    hits = _compiled_programs.cache_info().hits
    programs = _compiled_programs(model, dataclasses.replace(obs.metadata, client_ids=()), config, compilation)
    invert_gradients(obs, model, config, jax.random.key(2), victims=[1], compilation=compilation)
    assert _compiled_programs.cache_info().hits == hits + 2
    assert programs.runner.single_iteration._cache_size() == 1


def test_public_mean_initialisation_starts_at_the_public_mean_within_the_jitter(tiny_setup):
    model, _, _, _, obs = tiny_setup
    public_mean = np.full((8, 8, 1), 0.3, np.float32)
    config = InvertingGradientsConfig(iterations=1, learning_rate=1e-6, init="public_mean")
    result = invert_gradients(obs, model, config, jax.random.key(1), victims=[0], public_mean=public_mean)
    offset = np.abs(result.inputs - public_mean)
    assert offset.max() <= PUBLIC_MEAN_JITTER + 1e-4 and offset.mean() > 0.01  # jittered, not the constant
    with pytest.raises(ValueError, match="public_mean of shape"):
        invert_gradients(obs, model, config, jax.random.key(1), victims=[0])


def test_public_mean_initialisation_needs_the_attackers_public_images(tiny_setup):
    model = tiny_setup[0]
    config = InvertingGradientsConfig(init="public_mean")
    assert config.needs_public_images and not InvertingGradientsConfig().needs_public_images
    with pytest.raises(ValueError, match="needs the attacker's public images"):
        config.make(model, PublicKnowledge(compilation=AttackCompilation()))
