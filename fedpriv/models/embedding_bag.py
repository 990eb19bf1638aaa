"""An embedding-bag classifier over bags of code/token ids (EHR records).

A record is ``[max_codes]`` int ids with 0 as padding. Each id looks up a row of the
embedding table; the rows are pooled (sum or mean over the non-padding positions), then
pass through ``Dense`` + ReLU layers and a ``Dense`` head.

Parameter names (what attacks look for):

* ``params["embedding"]["embedding"]``: the table ``[vocabulary_size, embedding_dim]``;
  row ``i`` is token ``i``. Row 0 (padding) never receives a gradient: padding positions
  are masked out before pooling, so its gradient is exactly zero.
* ``params["dense_0"]``, ``params["dense_1"]``, ...: hidden layers with bias, applied to
  the pooled vector (``dense_0`` is the first layer after pooling).
* ``params["head"]``: the output layer (``head_names = ("head",)``); it is the first layer
  after pooling when ``hidden_sizes == ()``.

Why this leaks: with sum pooling, the gradient of row ``c`` of the table is
``count_c * dL/dpooled`` summed over the records that hold ``c``, so the non-zero rows of
an update are exactly the codes used.

References:
  Mikolov et al. "Distributed Representations of Words and Phrases and their
  Compositionality", NeurIPS 2013, arXiv:1310.4546 (bag-of-embeddings models).
  Melis, Song, De Cristofaro, Shmatikov. "Exploiting Unintended Feature Leakage in
  Collaborative Learning", IEEE S&P 2019, arXiv:1805.04049 (embedding-gradient leakage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedpriv.models.base import check_choice, check_num_classes, check_positive_int, from_linen
from fedpriv.typing import Batch, Model

POOLINGS = ("sum", "mean")


class EmbeddingBag(nn.Module):
    """Embed, mask padding, pool, ``Dense`` + ReLU per hidden size, ``Dense`` head.

    Attributes:
      vocabulary_size: rows of the embedding table (ids in ``[0, vocabulary_size)``).
      embedding_dim: width of the table.
      hidden_sizes: widths of the hidden layers (``dense_0``, ``dense_1``, ...).
      num_outputs: width of the head.
      pooling: ``"sum"`` or ``"mean"`` over the non-padding positions.
    """

    vocabulary_size: int
    embedding_dim: int
    hidden_sizes: Sequence[int]
    num_outputs: int
    pooling: str = "sum"

    @nn.compact
    def __call__(self, codes: jax.Array) -> jax.Array:
        # Inputs may arrive as floats (shape checks trace with zeros); ids are integers.
        codes = codes.astype(jnp.int32).reshape((codes.shape[0], -1))
        embedded = nn.Embed(self.vocabulary_size, self.embedding_dim, name="embedding")(codes)
        present = codes != 0
        # where (not a product) so the padding row's gradient is exactly zero even if a
        # downstream gradient were not finite.
        pooled = jnp.sum(jnp.where(present[..., None], embedded, 0.0), axis=1)
        if self.pooling == "mean":
            pooled = pooled / jnp.maximum(jnp.sum(present, axis=1, keepdims=True), 1).astype(pooled.dtype)
        x = pooled
        for index, size in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(size, name=f"dense_{index}")(x))
        return nn.Dense(self.num_outputs, name="head")(x)


def embedding_bag(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    vocabulary_size: int,
    embedding_dim: int = 128,
    hidden_sizes: Sequence[int] = (128,),
    pooling: str = "sum",
    multi_label: bool = False,
) -> Model:
    """Builds an embedding-bag ``Model`` over records of ``max_codes`` token ids.

    Args:
      input_shape: ``(max_codes,)``.
      num_classes: classes (>= 2) for softmax cross-entropy, or labels ``L`` (>= 1) with
        ``multi_label=True``.
      vocabulary_size: size of the token vocabulary, id 0 being padding (>= 2).
      embedding_dim: width of the embedding table.
      hidden_sizes: widths of the hidden ReLU layers; ``()`` puts the head on the pooled vector.
      pooling: ``"sum"`` or ``"mean"`` over the non-padding positions.
      multi_label: if True, ``per_example_loss`` is the sigmoid binary cross-entropy summed
        over the ``L`` labels, with ``batch["y"]`` multi-hot ``[B, L]``.

    Returns:
      A ``Model`` named ``"embedding_bag"`` with ``head_names=("head",)`` and the parameter
      names of the module docstring.

    Raises:
      ValueError: naming the argument, for a bad shape, size, pooling or class count.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = embedding_bag((6,), 3, vocabulary_size=10, embedding_dim=4, hidden_sizes=(8,))
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
      >>> params["embedding"]["embedding"].shape, sorted(params)
      ((10, 4), ['dense_0', 'embedding', 'head'])
    """
    name = "embedding_bag"
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 1:
        raise ValueError(f"model {name!r}: input_shape must be (max_codes,), got {input_shape!r}")
    shape = (check_positive_int(shape[0], field="input_shape[0]", name=name),)
    if not isinstance(multi_label, bool):
        raise ValueError(f"model {name!r}: multi_label must be a bool, got {multi_label!r}")
    if multi_label:
        num_classes = check_positive_int(num_classes, field="num_classes", name=name)
    else:
        num_classes = check_num_classes(num_classes, name=name)
    vocabulary_size = check_positive_int(vocabulary_size, field="vocabulary_size", name=name)
    if vocabulary_size < 2:
        raise ValueError(f"model {name!r}: vocabulary_size must be >= 2 (id 0 is padding), got {vocabulary_size}")
    embedding_dim = check_positive_int(embedding_dim, field="embedding_dim", name=name)
    try:
        hidden_sizes = tuple(hidden_sizes)
    except TypeError:
        raise ValueError(f"model {name!r}: hidden_sizes must be a sequence of positive integers, "
                         f"got {hidden_sizes!r}") from None
    hidden_sizes = tuple(check_positive_int(size, field="hidden_sizes", name=name) for size in hidden_sizes)
    pooling = check_choice(pooling, field="pooling", allowed=POOLINGS, name=name)
    module = EmbeddingBag(vocabulary_size=vocabulary_size, embedding_dim=embedding_dim,
                          hidden_sizes=hidden_sizes, num_outputs=num_classes, pooling=pooling)
    model = from_linen(module, input_shape=shape, num_classes=num_classes, head_names=("head",), name=name)
    if not multi_label:
        return model

    def per_example_loss(params, batch: Batch) -> jax.Array:
        logits = model.apply(params, batch["x"])
        targets = batch["y"].astype(logits.dtype)
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)

    return dataclasses.replace(model, per_example_loss=per_example_loss)
