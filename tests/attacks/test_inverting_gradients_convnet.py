"""Inverting Gradients on the untrained ConvNet of Geiping et al., batch 1, CT phantoms.

The numbers asserted here were measured on this project's CPU machines (jax 0.10.2) and
are the ones reported in the closing note of the foundation issue: at 400 iterations the
width-16 GroupNorm ConvNet reaches 9.1 dB on this 32x32 phantom (the random start is
5.9 dB) but the reconstruction is not yet closest to its own record; at 3,000 iterations
with TV weight 0.01 it passes 11 dB. It was then also re-identified among 16 patients;
re-measured on 2026-12-03 it no longer is (a strict xfail below). The paper runs
4,800-24,000 iterations with 8 restarts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks import InvertingGradientsConfig, invert_gradients
from fedpriv.data import make_phantom_cohort
from fedpriv.metrics import psnr, reidentification_rate
from fedpriv.models import make_model
from tests.attacks.helpers import observe


def _attack(iterations, tv_weight=1e-4):
    cohort = make_phantom_cohort(16, 32, np.random.default_rng(0))
    model = make_model("convnet", input_shape=(32, 32, 1), num_classes=4, width=16)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    victim = 3
    x = cohort.images[victim].reshape(1, 1, 1, 32, 32, 1)
    y = cohort.labels[victim].reshape(1, 1, 1)
    observation = observe(model, params, x, y)
    config = InvertingGradientsConfig(iterations=iterations, tv_weight=tv_weight, restarts=1)
    result = invert_gradients(observation, model, config, jax.random.key(1), victims=[0])
    reconstructed = result.inputs.reshape(1, 32, 32, 1)
    start = jax.random.uniform(jax.random.key(7), (1, 32, 32, 1))
    return (float(psnr(reconstructed, x.reshape(1, 32, 32, 1))[0]), float(psnr(start, x.reshape(1, 32, 32, 1))[0]),
            reidentification_rate(reconstructed, [victim], cohort.images, np.arange(16)), result, y)


@pytest.mark.slow  # 36 s of ConvNet gradients; the MLP/LeNet recovery tests stay in the default run
def test_inverting_gradients_recovers_a_phantom_from_an_untrained_convnet():
    reached, random_start, _, result, y = _attack(iterations=400)
    np.testing.assert_array_equal(result.labels, y)  # iDLG labels at batch 1
    assert random_start < 7.0
    assert reached > 8.5, reached
    assert reached > random_start + 2.5
    assert result.trace[0, 0, -1] < 0.75 * result.trace[0, 0, 0]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured 2026-12-03: still > 11 dB at 3,000 iterations, but the nearest "
                   "of the 16 records is another patient's; the GroupNorm ConvNet is too hard for IG (issue #10)")
def test_inverting_gradients_longer_budget_reaches_higher_psnr():
    reached, _, reidentified, _, _ = _attack(iterations=3000, tv_weight=0.01)
    assert reached > 11.0, reached
    assert reidentified == 1.0
