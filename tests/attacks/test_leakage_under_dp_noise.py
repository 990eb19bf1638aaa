"""Leakage falls as DP-SGD noise grows, so a defense makes a visible difference (issue #10).

Sixteen victims, one record each (FedSGD, batch 1), updates made by the hospitals' own
DP-SGD client function (clip, noise, divide by the expected batch); Inverting Gradients
with the labels known, so only the images are at stake. Mean PSNR over the victims must
fall strictly with the noise multiplier.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.attacks import AttackCompilation, InvertingGradientsConfig, invert_gradients
from fedpriv.defenses import DPSGDPlan
from fedpriv.federated import LocalTrainingConfig, for_each_client, make_client_update
from fedpriv.metrics import psnr
from fedpriv.models import make_model
from fedpriv.typing import ClientData, Observation, ProtocolMetadata

VICTIMS = 16
CLIP = 1.0


def _observe_under_dp(model, params, x, y, noise_multiplier):
    plan = DPSGDPlan(l2_clip_norm=CLIP, noise_multiplier=noise_multiplier, sampling_rate=0.5, steps=1,
                     expected_batch_size=1.0)
    run = for_each_client(make_client_update(model, LocalTrainingConfig(learning_rate=1.0), plan), "vmap")
    data = ClientData(examples={"x": jnp.asarray(x), "y": jnp.asarray(y)}, example_mask=jnp.ones(y.shape),
                      client_mask=jnp.ones(VICTIMS), record_ids=jnp.zeros(y.shape, jnp.int32))
    updates, _ = jax.jit(run)(params, data, jax.random.split(jax.random.key(7), VICTIMS))
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=1, learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=tuple(range(VICTIMS)))
    return Observation(params=params, updates=updates, aggregated=False, round_index=0, metadata=metadata)


def test_mean_leakage_over_sixteen_victims_falls_with_the_noise_multiplier():
    model = make_model("mlp", input_shape=(8, 8, 1), num_classes=4, hidden_sizes=(32,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    rng = np.random.default_rng(0)
    x = rng.random((VICTIMS, 1, 1, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 4, (VICTIMS, 1, 1)).astype(np.int32)
    config = InvertingGradientsConfig(iterations=150, tv_weight=0.0, label_strategy="known")
    mean_psnr = []
    for sigma in (0.0, 0.03, 0.3, 3.0):
        observation = _observe_under_dp(model, params, x, y, sigma)
        result = invert_gradients(observation, model, config, jax.random.key(1), victims=range(VICTIMS), labels=y,
                                  compilation=AttackCompilation(loop="scan", batching="vmap", scan_chunk=150))
        scores = np.minimum(np.asarray(psnr(result.inputs.reshape(VICTIMS, 8, 8, 1),
                                            x.reshape(VICTIMS, 8, 8, 1))), 100.0)
        mean_psnr.append(float(np.mean(scores)))
    assert all(a > b for a, b in zip(mean_psnr, mean_psnr[1:])), mean_psnr
    assert mean_psnr[0] > 30 and mean_psnr[-1] < 12, mean_psnr  # exact without noise, near chance at sigma 3
