"""Label inference from the last layer's update.

iDLG (Zhao et al. 2020, arXiv 2001.02610): with softmax cross-entropy and one example,
the gradient of the head bias is ``softmax(z) - onehot(y)``, whose only negative entry is
the label. A client update is ``-learning_rate * gradient``, so the label is the only
positive entry of the bias update. Without a bias, the head kernel's gradient is
``h (p - onehot(y))^T`` with non-negative features ``h`` (ReLU/sigmoid), so the label's
column sum has the opposite sign of all others.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fedpriv.typing import Model, Observation


def idlg_labels(observation: Observation, model: Model, positions) -> np.ndarray:
    """Recovers the single label behind each observed update (batch of one, one step).

    Args:
      observation: what the server saw; its protocol must be one step of one example.
      model: the model (its ``head_names`` locate the last layer).
      positions: positions of the victims on the observed client axis.

    Returns:
      ``[V, 1, 1]`` int32 labels.

    Raises:
      ValueError: if the protocol is not one step of batch 1 (iDLG is exact only there;
        batches need a label-count method).
    """
    metadata = observation.metadata
    if metadata.local_steps * metadata.batch_size != 1:
        raise ValueError("label_strategy 'idlg' needs one local step of batch 1, got local_steps="
                         f"{metadata.local_steps}, batch_size={metadata.batch_size}; use known labels")
    if not model.head_names:
        raise ValueError(f"model {model.name!r} names no head layer; iDLG needs the last layer")
    head = observation.updates[model.head_names[-1]]
    if "bias" in head:
        scores = head["bias"]  # [C, K]: the label is the only positive entry
    else:
        scores = jnp.sum(head["kernel"], axis=-2)  # [C, K] column sums of the kernel update
    labels = np.asarray(jnp.argmax(scores, axis=-1))[np.asarray(positions)]
    return labels.reshape(-1, 1, 1).astype(np.int32)
