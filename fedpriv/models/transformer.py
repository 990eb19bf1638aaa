"""A small Transformer encoder that classifies token sequences (clinical notes).

Token + learned positional embeddings, pre-LayerNorm encoder blocks (masked multi-head
self-attention, then a GELU MLP), pooling and a ``Dense`` head. Only LayerNorm: the model
is vmapped per client and trained with per-example DP (DESIGN §2).

Padding (id 0, ``fedpriv.public.clinical_words.PAD_ID``) is masked out exactly: a padded
key gets attention weight exactly 0 (the mask multiplies the exponentials instead of
adding a large negative number), and pooling averages only real positions. Padding
therefore changes no logit, and every parameter row that only padding touches (the
padding token's embedding, the positional embeddings past the longest note) gets a
gradient of exactly zero, so an update reveals the set of tokens used and the length.

Inputs are ``[B, max_len]`` token ids, or ``[B, max_len, vocabulary_size]`` rows of
weights over the vocabulary (one-hot rows give exactly the same logits as the ids). The
second form is the continuous relaxation that token-recovery attacks optimise
(``fedpriv.attacks.tokens``); the weight of ``[PAD]`` in a row is how much that position
counts as padding.

Parameter paths (``params[...]``):
  ``token_embedding/embedding`` ``[vocabulary_size, embedding_dim]`` — the token table,
  ``position_embedding/embedding`` ``[sequence_length, embedding_dim]`` (``max_len``, plus
  one for the ``[CLS]`` slot with ``pooling="cls"``), ``block_{i}/...``, ``final_norm``,
  ``head``.

References:
  Vaswani et al. "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762.
  Devlin et al. "BERT", NAACL 2019, arXiv:1810.04805 (learned positions, [CLS] pooling).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedpriv.models.base import check_choice, check_num_classes, check_positive_int, check_shape, from_linen
from fedpriv.public.clinical_words import CLS_ID, PAD_ID
from fedpriv.typing import Model

POOLINGS = ("mean", "cls")
TOKEN_EMBEDDING_PATH = ("token_embedding", "embedding")
POSITION_EMBEDDING_PATH = ("position_embedding", "embedding")


class TokenEmbedding(nn.Module):
    """A token table that takes ids ``[B, L]`` or weights over the vocabulary ``[B, L, V]``."""

    vocabulary_size: int
    embedding_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                           (self.vocabulary_size, self.embedding_dim))
        if x.ndim == 2:
            return jnp.take(table, x, axis=0)
        return x @ table


def masked_attention(query, key, value, key_mask):
    """Scaled dot-product attention whose padded keys get weight exactly zero.

    Args:
      query, key, value: ``[B, L, H, d]``.
      key_mask: ``[B, L]`` in ``[0, 1]``: 1 for a real token, 0 for padding (fractional
        values weight a key softly, for relaxed inputs).

    Returns:
      ``[B, L, H, d]``. A query whose keys are all padding gets zeros.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    weights_mask = key_mask[:, None, None, :]
    # The shift only avoids overflow; it is a constant for the softmax, so no gradient.
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(weights_mask > 0, scores, -jnp.inf), axis=-1, keepdims=True))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    exponentials = jnp.exp(scores - shift) * weights_mask
    total = jnp.sum(exponentials, axis=-1, keepdims=True)
    # A query with no real key divides by 1, not by a tiny number: its weights are zero
    # and so is every gradient through them (a tiny divisor would overflow to inf * 0).
    weights = exponentials / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class EncoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        dim = h.shape[-1]
        head_dim = dim // self.num_heads
        normed = nn.LayerNorm(name="attention_norm")(h)
        projections = [nn.DenseGeneral((self.num_heads, head_dim), name=name)(normed)
                       for name in ("query", "key", "value")]
        attended = masked_attention(*projections, mask)
        h = h + nn.DenseGeneral(dim, axis=(-2, -1), name="attention_output")(attended)
        normed = nn.LayerNorm(name="mlp_norm")(h)
        hidden = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_hidden")(normed))
        return h + nn.Dense(dim, name="mlp_output")(hidden)


class TransformerClassifier(nn.Module):
    """Embeddings, ``num_layers`` encoder blocks, final LayerNorm, pooling, ``head``.

    Attributes:
      vocabulary_size, embedding_dim, num_heads, num_layers, mlp_dim: sizes.
      max_len: tokens per example.
      num_classes: width of the head.
      pooling: ``"mean"`` over real tokens or ``"cls"`` (a ``[CLS]`` token prepended).
    """

    vocabulary_size: int
    max_len: int
    num_classes: int
    embedding_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_dim: int = 128
    pooling: str = "mean"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim not in (2, 3) or x.shape[1] != self.max_len:
            raise ValueError(f"model 'transformer' takes [B, {self.max_len}] token ids or [B, {self.max_len}, "
                             f"{self.vocabulary_size}] relaxed rows, got shape {x.shape}")
        if x.ndim == 2:
            x = x.astype(jnp.int32)
            mask = (x != PAD_ID).astype(jnp.float32)
        else:
            mask = 1.0 - x[..., PAD_ID]
        if self.pooling == "cls":
            cls = jnp.full((x.shape[0], 1), CLS_ID, jnp.int32)
            if x.ndim == 3:
                cls = jax.nn.one_hot(cls, self.vocabulary_size, dtype=x.dtype)
            x = jnp.concatenate([cls, x], axis=1)
            mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), mask.dtype), mask], axis=1)
        sequence_length = x.shape[1]
        h = TokenEmbedding(self.vocabulary_size, self.embedding_dim, name="token_embedding")(x)
        h = h + PositionEmbedding(sequence_length, self.embedding_dim, name="position_embedding")()[None]
        for index in range(self.num_layers):
            h = EncoderBlock(self.num_heads, self.mlp_dim, name=f"block_{index}")(h, mask)
        h = nn.LayerNorm(name="final_norm")(h)
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:
            pooled = jnp.sum(h * mask[..., None], axis=1) / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
        return nn.Dense(self.num_classes, name="head")(pooled)


class PositionEmbedding(nn.Module):
    """Learned absolute positions: a ``[sequence_length, embedding_dim]`` table."""

    sequence_length: int
    embedding_dim: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("embedding", nn.initializers.normal(stddev=0.02),
                          (self.sequence_length, self.embedding_dim))


def transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    vocabulary_size: int,
    embedding_dim: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    mlp_dim: int = 128,
    pooling: str = "mean",
) -> Model:
    """Builds a Transformer encoder classifier over token ids.

    Args:
      input_shape: ``(max_len,)``.
      num_classes: number of classes (>= 2).
      vocabulary_size: rows of the token table (``clinical_vocabulary().size``); must
        exceed the ``[CLS]`` id when ``pooling="cls"``.
      embedding_dim: model width, a multiple of ``num_heads``.
      num_heads: attention heads.
      num_layers: encoder blocks (>= 1).
      mlp_dim: hidden width of each block's MLP.
      pooling: ``"mean"`` over real tokens or ``"cls"``.

    Returns:
      A ``Model`` named ``"transformer"`` with ``head_names=("head",)``; the token table
      is ``params["token_embedding"]["embedding"]`` (``TOKEN_EMBEDDING_PATH``).

    Raises:
      ValueError: naming the argument, for a bad shape or size, before any compute.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = transformer((8,), 3, vocabulary_size=50, embedding_dim=16, num_heads=2)
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
      >>> model.apply(params, jnp.ones((2, 8), jnp.int32)).shape
      (2, 3)
    """
    name = "transformer"
    input_shape = check_shape(input_shape, name=name)
    if len(input_shape) != 1:
        raise ValueError(f"model {name!r} takes token sequences of shape (max_len,), got input_shape={input_shape}")
    num_classes = check_num_classes(num_classes, name=name)
    vocabulary_size = check_positive_int(vocabulary_size, field="vocabulary_size", name=name)
    embedding_dim = check_positive_int(embedding_dim, field="embedding_dim", name=name)
    num_heads = check_positive_int(num_heads, field="num_heads", name=name)
    num_layers = check_positive_int(num_layers, field="num_layers", name=name)
    mlp_dim = check_positive_int(mlp_dim, field="mlp_dim", name=name)
    pooling = check_choice(pooling, field="pooling", allowed=POOLINGS, name=name)
    if embedding_dim % num_heads:
        raise ValueError(f"model {name!r}: embedding_dim must be a multiple of num_heads={num_heads}, "
                         f"got {embedding_dim}")
    minimum_vocabulary = (CLS_ID if pooling == "cls" else PAD_ID) + 2
    if vocabulary_size < minimum_vocabulary:
        raise ValueError(f"model {name!r}: vocabulary_size must be >= {minimum_vocabulary} with "
                         f"pooling={pooling!r} (the special ids), got {vocabulary_size}")
    module = TransformerClassifier(vocabulary_size=vocabulary_size, max_len=input_shape[0],
                                   num_classes=num_classes, embedding_dim=embedding_dim,
                                   num_heads=num_heads, num_layers=num_layers, mlp_dim=mlp_dim,
                                   pooling=pooling)
    return from_linen(module, input_shape=input_shape, num_classes=num_classes,
                      head_names=("head",), name=name)
