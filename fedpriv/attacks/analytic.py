"""Exact input recovery from a fully connected layer with bias.

For ``y = x W + b`` and one example, ``dL/dW = x^T (dL/dy)`` and ``dL/db = dL/dy``, so
``x = (dL/dW)[:, j] / (dL/db)[j]`` for any unit ``j`` with a non-zero bias gradient
(Phong et al. 2017; Geiping et al. 2020, arXiv 2003.14053). The ratio cancels the
learning rate, so it works on a FedSGD update as well as on a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from fedpriv.typing import Observation, Reconstruction


def recover_dense_layer_input(kernel_update: jnp.ndarray, bias_update: jnp.ndarray) -> jnp.ndarray:
    """The input of a dense layer from its kernel ``[in, out]`` and bias ``[out]`` updates.

    Uses the unit with the largest absolute bias update, the best-conditioned ratio.
    """
    unit = jnp.argmax(jnp.abs(bias_update))
    return kernel_update[:, unit] / bias_update[unit]


def invert_dense_layer(observation: Observation, layer: str, victims: Sequence[int]) -> Reconstruction:
    """Recovers each victim's single input from the dense layer ``layer`` (the first layer).

    Args:
      observation: the server's view; the protocol must be one example in one step.
      layer: name of the top-level dense layer whose input is the model input.
      victims: positions on the observed client axis.
    """
    metadata = observation.metadata
    if metadata.local_steps * metadata.batch_size != 1:
        raise ValueError("the analytic dense-layer attack is exact for one example in one step; got "
                         f"local_steps={metadata.local_steps}, batch_size={metadata.batch_size}")
    if layer not in observation.updates or "bias" not in observation.updates[layer]:
        raise ValueError(f"layer {layer!r} is not a dense layer with bias in the observed update; "
                         f"layers: {sorted(observation.updates)}")
    kernel, bias = observation.updates[layer]["kernel"], observation.updates[layer]["bias"]
    inputs = np.stack([np.asarray(recover_dense_layer_input(kernel[v], bias[v])) for v in victims])
    victims = tuple(int(v) for v in victims)
    return Reconstruction(inputs=inputs.reshape(len(victims), 1, 1, *metadata.input_shape),
                          labels=np.full((len(victims), 1, 1), -1, np.int32),
                          objective=np.zeros(len(victims), np.float32),
                          trace=np.zeros((len(victims), 1, 0), np.float32), victims=victims)
