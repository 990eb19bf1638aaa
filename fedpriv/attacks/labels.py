"""Label inference from the last layer's update.

iDLG (Zhao et al. 2020, arXiv 2001.02610): with softmax cross-entropy and one example,
the gradient of the head bias is ``softmax(z) - onehot(y)``, whose only negative entry is
the label. A client update is ``-learning_rate * gradient``, so the label is the only
positive entry of the bias update. Without a bias, the head kernel's gradient is
``h (p - onehot(y))^T`` with non-negative features ``h`` (ReLU/sigmoid), so the label's
column sum has the opposite sign of all others.

Batches hide which example carries which label but not how many carry each: LLG+
(Wainakh et al. 2022, arXiv 2105.09369) and an iLRG-style linear solve (Ma et al. 2023,
arXiv 2211.12044) recover the per-class counts from a FedSGD update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.typing import Model, Observation


def attack_labels(observation: Observation, model: Model, victims, strategy: str,
                  labels: np.ndarray | None = None) -> np.ndarray:
    """The ``[V, S, B]`` labels a gradient-matching attack uses for its victims.

    ``strategy="known"`` takes ``labels`` as declared side knowledge (checked: integers in
    ``[0, num_classes)`` of shape ``[victims, local_steps, batch_size]``); ``"idlg"`` reads
    them off the update (batch of one only); ``"counts"`` recovers the batch's label counts
    with :func:`ilrg_label_counts` (FedSGD) and uses them in ascending order, since
    gradient matching needs only the multiset.

    Raises:
      ValueError: missing or misshapen known labels, or iDLG at batch > 1; before compute.
    """
    metadata = observation.metadata
    expected = (len(victims), metadata.local_steps, metadata.batch_size)
    if strategy == "idlg":
        return idlg_labels(observation, model, victims)
    if strategy == "counts":
        return labels_from_counts(ilrg_label_counts(observation, model, victims)).reshape(expected)
    if strategy != "known":
        raise ValueError(f"label strategy must be 'known', 'idlg' or 'counts', got {strategy!r}")
    if labels is None:
        raise ValueError("label_strategy 'known' needs labels of shape [victims, local_steps, batch_size]")
    labels = np.asarray(labels)
    if labels.shape != expected or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape {expected}, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= metadata.num_classes):
        raise ValueError(f"labels must lie in [0, {metadata.num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


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
    if model.head_names[-1] in metadata.private_layers:
        raise ValueError("label_strategy 'idlg' reads the head's update, which model partitioning keeps private; "
                         "use known labels")
    head = observation.updates[model.head_names[-1]]
    if "bias" in head:
        scores = head["bias"]  # [C, K]: the label is the only positive entry
    else:
        scores = jnp.sum(head["kernel"], axis=-2)  # [C, K] column sums of the kernel update
    labels = np.asarray(jnp.argmax(scores, axis=-1))[np.asarray(positions)]
    return labels.reshape(-1, 1, 1).astype(np.int32)


# --- Label counts for batches --------------------------------------------------------
#
# For softmax cross-entropy averaged over a batch of B examples, the head ``z = h K + b``
# has gradients
#     dL/dK = (1/B) sum_b h_b (p_b - onehot(y_b))^T    [d, classes]
#     dL/db = (1/B) sum_b (p_b - onehot(y_b))          [classes]
# so the count of class k is n_k = sum_b p_bk - B dL/db_k exactly. Both methods below
# estimate the unknown per-example terms (features ``h_b``, probabilities ``p_b``) and
# solve for the counts; for untrained networks, whose outputs vary little from one input
# to the next, the estimates are close and the rounded counts are usually exact.


def _fedsgd_head_gradients(observation: Observation, model: Model, positions, *, need_bias: bool):
    """The head's batch-mean gradient ``(kernel [V, d, K], bias [V, K] | None)`` per victim.

    A FedSGD update (one SGD step) is ``-learning_rate * gradient``; the learning rate is
    public, so the gradient is exact.
    """
    metadata = observation.metadata
    if observation.aggregated:
        raise ValueError("label counts need per-client updates; this observation holds only an aggregate")
    if metadata.local_steps != 1 or metadata.local_optimizer != "sgd":
        raise ValueError("label-count recovery reads a FedSGD gradient: it needs local_steps=1 and "
                         f"local_optimizer='sgd', got local_steps={metadata.local_steps}, "
                         f"local_optimizer={metadata.local_optimizer!r}")
    if not model.head_names:
        raise ValueError(f"model {model.name!r} names no head layer; label counts need the last layer")
    head = observation.updates[model.head_names[-1]]
    if "kernel" not in head or head["kernel"].ndim != 3:
        raise ValueError(f"the head {model.head_names[-1]!r} of model {model.name!r} is not a dense layer "
                         "with a [features, classes] kernel")
    if need_bias and "bias" not in head:
        raise ValueError(f"the head {model.head_names[-1]!r} of model {model.name!r} has no bias; "
                         "iLRG-style counting needs it (use llg_label_counts)")
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    num_observed = head["kernel"].shape[0]
    if positions.size == 0 or positions.min() < 0 or positions.max() >= num_observed:
        raise ValueError(f"positions must name observed clients in [0, {num_observed}), got {positions.tolist()}")
    scale = -1.0 / metadata.learning_rate
    kernel = np.asarray(head["kernel"], np.float64)[positions] * scale
    bias = np.asarray(head["bias"], np.float64)[positions] * scale if "bias" in head else None
    return kernel, bias


def round_counts(estimates: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total`` that follow ``estimates``.

    Each of the ``total`` units goes in turn to the class whose (clipped) estimate most
    exceeds its count so far, so an estimate within 0.5 of an integer vector with the
    right total rounds to it.

    Args:
      estimates: ``[..., K]`` real-valued count estimates.
      total: the sum every rounded vector must have (the batch size).

    Returns:
      ``[..., K]`` int32 counts.

    Example:
      >>> round_counts(np.array([2.6, 0.7, -0.2, 0.9]), 4).tolist()
      [2, 1, 0, 1]
    """
    estimates = np.clip(np.asarray(estimates, np.float64), 0.0, None)
    flat = estimates.reshape(-1, estimates.shape[-1])
    counts = np.zeros(flat.shape, np.int64)
    for row, estimate in enumerate(flat):
        for _ in range(int(total)):
            counts[row, int(np.argmax(estimate - counts[row]))] += 1
    return counts.reshape(estimates.shape).astype(np.int32)


def labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """The labels ``[..., B]`` in ascending order that a count vector ``[..., K]`` stands for.

    Batch attacks that take known labels only need the multiset, so any order works.

    Example:
      >>> labels_from_counts(np.array([2, 0, 1])).tolist()
      [0, 0, 2]
    """
    counts = np.asarray(counts)
    flat = counts.reshape(-1, counts.shape[-1])
    totals = flat.sum(axis=-1)
    if np.any(totals != totals[0]) or np.any(flat < 0):
        raise ValueError("counts must be non-negative with the same total in every row")
    labels = np.stack([np.repeat(np.arange(counts.shape[-1]), row) for row in flat])
    return labels.reshape(*counts.shape[:-1], int(totals[0])).astype(np.int32)


def head_features(model: Model, params, inputs: jax.Array) -> jax.Array:
    """The features ``h [N, d]`` the head sees for ``inputs [N, *input_shape]``.

    The model is an opaque ``apply``; since the head is ``z = h K + b``, the derivative of
    one logit with respect to its kernel column is exactly ``h``.
    """
    head_name = model.head_names[-1]

    def features_of(x):
        gradient = jax.grad(lambda p: model.apply(p, x[None])[0, 0])(params)
        return gradient[head_name]["kernel"][:, 0]

    return jax.lax.map(features_of, inputs)


def llg_label_counts(observation: Observation, model: Model, positions, key: jax.Array, *,
                     dummy_examples: int = 64, dummy_inputs: jax.Array | None = None) -> np.ndarray:
    """Label counts per victim from the head kernel's gradient (LLG+, Wainakh et al. 2022).

    Each class's column sum ``s_k = sum_j dL/dK_jk = (1/B) sum_b (p_bk - y_bk) S_b`` with
    ``S_b = sum_j h_bj`` is negative iff the class occurs (for non-negative features,
    ReLU or sigmoid), and each occurrence lowers it by about the *impact*
    ``E[S] / B``, on top of an *offset* ``E[p_k S]`` from the other examples' predictions.
    Both are estimated from the observed model on dummy inputs. Every class with a
    negative sum gets one label first; the rest go one at a time to the class whose
    sum, corrected by offset and the impacts already assigned, stays lowest.

    Args:
      observation: FedSGD observation (one SGD step) with per-client updates.
      model: the model; its last ``head_names`` entry is a dense head.
      positions: victims on the observed client axis.
      key: draws the dummy inputs (uniform on ``[0, 1]``) when none are given.
      dummy_examples: how many dummy inputs estimate impact and offset.
      dummy_inputs: ``[N, *input_shape]`` public inputs to use instead (e.g. a public
        image set of the same kind).

    Returns:
      ``[V, K]`` int32 counts, each row summing to the protocol's batch size.

    Raises:
      ValueError: for a protocol other than FedSGD, an aggregate, a head that is not a
        dense layer, or bad positions; all before any compute.

    References:
      Wainakh, Ventola, Müßig, Keim, Garcia Cordero, Zimmer, Grube, Kersting, Mühlhäuser.
      "User-Level Label Leakage from Gradients in Federated Learning", PETS 2022,
      arXiv:2105.09369 (LLG, LLG*, LLG+).
    """
    if isinstance(dummy_examples, bool) or not (isinstance(dummy_examples, int) and dummy_examples >= 1):
        raise ValueError(f"dummy_examples must be an integer >= 1, got {dummy_examples!r}")
    kernel, _ = _fedsgd_head_gradients(observation, model, positions, need_bias=False)
    batch = observation.metadata.batch_size
    if dummy_inputs is None:
        dummy_inputs = jax.random.uniform(key, (dummy_examples, *model.input_shape))
    features = head_features(model, observation.params, dummy_inputs)
    probabilities = jax.nn.softmax(model.apply(observation.params, dummy_inputs), axis=-1)
    feature_sums = np.asarray(jnp.sum(features, axis=-1), np.float64)  # S per dummy example
    impact = float(np.mean(feature_sums)) / batch
    offset = np.mean(np.asarray(probabilities, np.float64) * feature_sums[:, None], axis=0)  # E[p_k S]
    column_sums = kernel.sum(axis=-2)  # [V, K]
    counts = np.zeros(column_sums.shape, np.int64)
    for row, sums in enumerate(column_sums):
        present = np.flatnonzero(sums < 0)
        present = present[np.argsort(sums[present])][:batch]  # most negative first
        counts[row, present] = 1
        remaining = sums - offset + impact * counts[row]
        for _ in range(batch - len(present)):
            k = int(np.argmin(remaining))
            counts[row, k] += 1
            remaining[k] += impact
    return counts.astype(np.int32)


ILRG_EMBEDDINGS = ("pooled", "class")


def ilrg_label_counts(observation: Observation, model: Model, positions, *, embeddings: str = "pooled",
                      min_relative_bias: float = 1e-3) -> np.ndarray:
    """Label counts per victim by a linear solve on class-wise estimates (iLRG-style).

    For each class the ratio ``e_k = dL/dK[:, k] / dL/db_k`` is a weighted mean of the
    batch's features (the weights are ``p_bk - y_bk``, so for a class in the batch it is
    close to the mean feature of its examples): the class-wise embedding. Its
    probabilities ``q_k = softmax(e_k K + b)`` stand in for those of the class's examples,
    giving the linear system ``B dL/db = sum_k n_k (q_k - onehot(k))`` in the counts
    ``n``, with ``sum_k n_k = B``. It is solved by least squares (the Moore-Penrose pseudoinverse)
    and rounded to integers with the right total. Classes whose bias gradient is below
    ``min_relative_bias`` of the largest use the batch's pooled embedding instead.

    Args:
      observation: FedSGD observation (one SGD step) with per-client updates.
      model: the model; its last ``head_names`` entry is a dense head with bias.
      positions: victims on the observed client axis.
      embeddings: ``"pooled"`` or ``"class"`` (see above).
      min_relative_bias: threshold under which a class's own ratio is ill-conditioned.

    Returns:
      ``[V, K]`` int32 counts, each row summing to the protocol's batch size.

    Raises:
      ValueError: for a protocol other than FedSGD, an aggregate, a head without bias,
        bad positions or a bad option; all before any compute.

    References:
      Ma, Sun, Cui, Li, Zhang, Yang, Xu. "Instance-wise Batch Label Restoration via
      Gradients in Federated Learning", ICLR 2023, arXiv:2211.12044.
    """
    if embeddings not in ILRG_EMBEDDINGS:
        raise ValueError(f"embeddings must be one of {ILRG_EMBEDDINGS}, got {embeddings!r}")
    if not 0 <= min_relative_bias < 1:
        raise ValueError(f"min_relative_bias must be in [0, 1), got {min_relative_bias!r}")
    kernel_grad, bias_grad = _fedsgd_head_gradients(observation, model, positions, need_bias=True)
    head = observation.params[model.head_names[-1]]
    weights = np.asarray(head["kernel"], np.float64)
    bias = np.asarray(head["bias"], np.float64)
    batch, num_classes = observation.metadata.batch_size, weights.shape[-1]
    counts = []
    for kernel_g, bias_g in zip(kernel_grad, bias_grad):
        # Pooled embedding: least-squares fit of every column to bias_g[k] * e.
        pooled = kernel_g @ bias_g / max(float(bias_g @ bias_g), 1e-300)
        if embeddings == "class":
            reliable = np.abs(bias_g) > min_relative_bias * np.max(np.abs(bias_g))
            class_embeddings = np.where(reliable[:, None], (kernel_g / np.where(reliable, bias_g, 1.0)).T,
                                        pooled[None])
        else:
            class_embeddings = np.broadcast_to(pooled, (num_classes, pooled.size))
        logits = class_embeddings @ weights + bias
        q = np.exp(logits - logits.max(axis=-1, keepdims=True))
        q /= q.sum(axis=-1, keepdims=True)  # [K classes (whose embedding), K outputs]
        coefficients = q - np.eye(num_classes)  # row k: q_k - onehot(k)
        # Unknown n [K]: the K bias equations and the total. The kernel equations hold in
        # principle too, but the class-wise embeddings are much rougher in d dimensions than
        # their probabilities are in K, and adding them made the counts worse (measured).
        system = np.concatenate([coefficients.T, np.ones((1, num_classes))])
        observed = np.concatenate([batch * bias_g, [batch]])
        estimate = np.linalg.pinv(system) @ observed
        counts.append(round_counts(estimate, batch))
    return np.stack(counts).astype(np.int32)
