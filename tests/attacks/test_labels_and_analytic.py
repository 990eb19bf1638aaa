import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks import idlg_labels, invert_dense_layer
from fedpriv.models.base import from_linen
from tests.attacks.helpers import observe


class ReluNet(nn.Module):
    hidden: int
    classes: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="first")(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.classes, name="head")(x)


@pytest.mark.slow  # 28 s over many models; single-model iDLG tests stay in the default run
def test_idlg_recovers_every_label_at_batch_one_over_many_random_relu_models():
    # iDLG (Zhao et al. 2020, arXiv 2001.02610): 100 % label accuracy at batch 1.
    rng = np.random.default_rng(0)
    correct = total = 0
    for trial in range(10):  # each model compiles once; 16 victims per model
        classes = int(rng.integers(2, 12))
        model = from_linen(ReluNet(hidden=int(rng.integers(4, 64)), classes=classes), input_shape=(6, 6, 1),
                           num_classes=classes, head_names=("head",), name="relu")
        params = model.init(jax.random.key(trial), jnp.zeros((1, 6, 6, 1)))
        x = rng.normal(size=(16, 1, 1, 6, 6, 1)).astype(np.float32)
        y = rng.integers(0, classes, size=(16, 1, 1)).astype(np.int32)
        recovered = idlg_labels(observe(model, params, x, y), model, range(16))
        correct += int(np.sum(recovered == y))
        total += y.size
    assert correct == total == 160


def test_idlg_without_head_bias_uses_kernel_column_sums():
    class NoBias(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.sigmoid(nn.Dense(16)(x.reshape(x.shape[0], -1)))
            return nn.Dense(5, use_bias=False, name="head")(x)

    model = from_linen(NoBias(), input_shape=(4, 4, 1), num_classes=5, head_names=("head",), name="nobias")
    params = model.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1)))
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, size=(10, 1, 1)).astype(np.int32)
    x = rng.normal(size=(10, 1, 1, 4, 4, 1)).astype(np.float32)
    np.testing.assert_array_equal(idlg_labels(observe(model, params, x, y), model, range(10)), y)


def test_idlg_refuses_batches():
    model = from_linen(ReluNet(hidden=8, classes=3), input_shape=(4, 4, 1), num_classes=3,
                       head_names=("head",), name="relu")
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    obs = observe(model, params, np.zeros((1, 1, 2, 4, 4, 1), np.float32), np.zeros((1, 1, 2), np.int32))
    with pytest.raises(ValueError, match="batch_size=2"):
        idlg_labels(obs, model, [0])


def test_dense_layer_with_bias_gives_its_input_back_exactly():
    # x = (dL/dW)[:, j] / (dL/db)[j] (Geiping et al. 2020, arXiv 2003.14053): PSNR > 60 dB.
    model = from_linen(ReluNet(hidden=32, classes=4), input_shape=(16, 16, 1), num_classes=4,
                       head_names=("head",), name="relu")
    params = model.init(jax.random.key(2), jnp.zeros((1, 16, 16, 1)))
    rng = np.random.default_rng(2)
    x = rng.random((3, 1, 1, 16, 16, 1)).astype(np.float32)
    obs = observe(model, params, x, rng.integers(0, 4, (3, 1, 1)).astype(np.int32))
    reconstruction = invert_dense_layer(obs, "first", victims=[0, 1, 2])
    mse = np.mean((reconstruction.inputs - x) ** 2, axis=(1, 2, 3, 4, 5))
    psnr = 10 * np.log10(1.0 / mse)
    assert np.all(psnr > 60), psnr
    relative = np.linalg.norm(reconstruction.inputs - x) / np.linalg.norm(x)
    assert relative < 1e-5
