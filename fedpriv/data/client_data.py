"""One round of padded, masked client data (``ClientData``) from a partition.

Every round has the same shapes ``[C, S, B, ...]`` so the jitted round compiles once;
what differs between clients (sizes, participation, sampled examples) lives in the
masks. Invariant of every output: a row is padding exactly when its ``example_mask`` is 0,
and every padding row has ``x = 0``, ``y = 0`` and ``record_ids = -1``. Padding therefore
contributes exactly zero, and ``record_ids`` lists precisely the records used.

Three ways of sampling local batches:

* ``"full"``: FedSGD, one step on the client's whole data set.
* ``"shuffle"``: FedAvg-style local SGD, ``local_steps`` batches of ``batch_size`` drawn
  without replacement within an epoch and reshuffled each epoch.
* ``"poisson"``: DP-SGD's Poisson subsampling, every record independently in every step
  with probability ``sampling_rate``. Sampled records are packed to the front of each
  step. The capacity is ``batch_size`` (e.g. ``poisson_capacity``, a bound that a draw
  exceeds with tiny probability) but grows to fit any larger draw, so the sampling is
  exact (no truncation), as privacy accounting assumes; only in that rare round do the
  shapes change (one recompilation). Without ``batch_size`` the capacity is the
  largest client's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import scipy.stats

from fedpriv.data._validation import check_generator, check_int
from fedpriv.typing import ClientData

SAMPLING_SCHEMES = ("full", "shuffle", "poisson")


def build_round_data(
    images: np.ndarray,
    labels: np.ndarray,
    partition: Sequence[np.ndarray],
    *,
    local_steps: int,
    batch_size: int | None = None,
    sampling: str,
    sampling_rate: float | None = None,
    participating: np.ndarray | None = None,
    generator: np.random.Generator,
    record_tiers: np.ndarray | None = None,
) -> ClientData:
    """Builds the ``ClientData`` of one round.

    Args:
      images: ``[N, *input_shape]`` cohort inputs: float images (e.g.
        ``ImageCohort.images``) or integer token/code ids with 0 as padding.
      labels: ``[N]`` integer labels, or ``[N, L]`` multi-hot labels.
      partition: one 1-D array of record indices per client (``C`` clients).
      local_steps: local steps ``S`` per client, >= 1 (must be 1 for ``"full"``).
      batch_size: examples per step. Required for ``"shuffle"`` (at most the smallest
        client's size). For ``"full"`` it is an optional fixed capacity ``B`` (>= the
        largest client, so shapes can stay fixed across partitions). For ``"poisson"`` it
        is the capacity, grown to fit a larger draw (see ``poisson_capacity``). ``None``
        means the largest client's size.
      sampling: ``"full"``, ``"shuffle"`` or ``"poisson"`` (see the module docstring).
      sampling_rate: Poisson inclusion probability in (0, 1]; required for ``"poisson"``
        and refused otherwise. An ``[N]`` array gives each record its own rate (the
        "sample" method of tiered DP-SGD).
      participating: optional bool ``[C]``; clients marked False take no part in the
        round: ``client_mask`` 0 and an all-padding block.
      generator: host-side generator (``fedpriv.keys.numpy_generator`` of the ``sampling``
        stream). The draws do not depend on ``participating``, so two rounds with the
        same generator state but different participants give the participants the same
        batches.
      record_tiers: optional ``[N]`` integer sensitivity tier of each record; the
        examples then carry it as ``"tier"`` (for a tiered DP plan).

    Returns:
      ``ClientData`` with ``examples = {"x": float32 (or int32 ids) [C, S, B, *input_shape],
      "y": int32 [C, S, B] (or [C, S, B, L])}``, float32 ``example_mask [C, S, B]`` and
      ``client_mask [C]``, int32 ``record_ids [C, S, B]``, all as ``jax.Array``.

    Raises:
      ValueError: naming the argument, for inconsistent shapes or out-of-range values,
        e.g. a ``batch_size`` larger than a client's data under ``"shuffle"``.
      TypeError: if ``generator`` is not a ``numpy.random.Generator``.

    Formal guarantees:
      With ``sampling="poisson"`` each record of a participating client is included in
      each step independently with probability exactly ``sampling_rate`` (no cap on the
      batch size), which is the add/remove-one Poisson subsampling that the DP-SGD
      accountant assumes, with the example as privacy unit. This function adds no noise
      and protects nothing by itself; ``"full"`` and ``"shuffle"`` are not Poisson
      sampling and must not be accounted as such.
    """
    images, labels, partition = _check_data(images, labels, partition)
    local_steps = check_int("local_steps", local_steps, minimum=1)
    if sampling not in SAMPLING_SCHEMES:
        raise ValueError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
    generator = check_generator("generator", generator)
    num_clients = len(partition)
    sizes = np.array([part.size for part in partition])
    participating = _check_participating(participating, num_clients)
    if sampling != "poisson" and sampling_rate is not None:
        raise ValueError(
            f"sampling_rate is only used with sampling='poisson', got sampling_rate="
            f"{sampling_rate!r} with sampling={sampling!r}; leave it None"
        )

    if sampling == "shuffle":
        if batch_size is None:
            raise ValueError("batch_size is required with sampling='shuffle', got None")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        for client, size in enumerate(sizes):
            if batch_size > size:
                raise ValueError(
                    f"batch_size={batch_size} exceeds the data of client {client}, which holds "
                    f"{size} records; sampling='shuffle' draws batches without replacement"
                )
        record_ids = np.stack(
            [_shuffled_batches(part, local_steps, batch_size, generator) for part in partition]
        )
    else:
        capacity = _capacity(batch_size, int(sizes.max()), allow_smaller=sampling == "poisson")
        if sampling == "full":
            if local_steps != 1:
                raise ValueError(
                    f"local_steps must be 1 with sampling='full' (one full-batch step), "
                    f"got {local_steps}"
                )
            record_ids = np.full((num_clients, 1, capacity), -1, dtype=np.int64)
            for client, part in enumerate(partition):
                record_ids[client, 0, : part.size] = generator.permutation(part)
        else:
            if isinstance(sampling_rate, np.ndarray):
                if sampling_rate.shape != images.shape[:1] or not np.all((sampling_rate > 0) & (sampling_rate <= 1)):
                    raise ValueError(f"per-record sampling_rate must have shape [N] = ({images.shape[0]},) with "
                                     f"every rate in (0, 1], got shape {sampling_rate.shape}")
            else:
                sampling_rate = _check_sampling_rate(sampling_rate)
            largest = int(sizes.max())
            candidates = np.full((num_clients, local_steps, largest), -1, dtype=np.int64)
            for client, part in enumerate(partition):
                candidates[client, :, : part.size] = part
            # One Bernoulli draw per (client, step, slot), padding included, so the
            # stream consumed does not depend on the partition's sizes.
            rates = (sampling_rate[np.maximum(candidates, 0)] if isinstance(sampling_rate, np.ndarray)
                     else sampling_rate)
            sampled = (generator.random(candidates.shape) < rates) & (candidates >= 0)
            capacity = max(capacity, int(sampled.sum(axis=-1).max(initial=0)))
            # Pack the sampled records to the front: a stable sort puts True first.
            order = np.argsort(~sampled, axis=-1, kind="stable")
            packed = np.where(np.take_along_axis(sampled, order, axis=-1),
                              np.take_along_axis(candidates, order, axis=-1), -1)
            record_ids = np.full((num_clients, local_steps, capacity), -1, dtype=np.int64)
            width = min(capacity, largest)
            record_ids[..., :width] = packed[..., :width]

    record_ids[~participating] = -1
    data = _assemble(images, labels, record_ids, participating)
    if record_tiers is not None:
        record_tiers = np.asarray(record_tiers)
        if record_tiers.shape != images.shape[:1] or not np.issubdtype(record_tiers.dtype, np.integer):
            raise ValueError(f"record_tiers must be an integer array of shape [N] = ({images.shape[0]},), got "
                             f"shape {record_tiers.shape} and dtype {record_tiers.dtype}")
        tiers = np.where(record_ids >= 0, record_tiers[np.maximum(record_ids, 0)], 0).astype(np.int32)
        data = ClientData(examples={**data.examples, "tier": jnp.asarray(tiers)}, example_mask=data.example_mask,
                          client_mask=data.client_mask, record_ids=data.record_ids)
    return data


def poisson_capacity(largest_client: int, sampling_rate: float, overflow_probability: float = 1e-6) -> int:
    """A batch capacity that one client's Poisson draw exceeds with at most ``overflow_probability``.

    The smallest ``k`` with ``P(Binomial(largest_client, sampling_rate) > k) <= overflow_probability``.
    Rounds whose draw exceeds it are not truncated: ``build_round_data`` grows the capacity.
    """
    largest_client = check_int("largest_client", largest_client, minimum=1)
    sampling_rate = _check_sampling_rate(sampling_rate)
    return max(1, int(scipy.stats.binom.isf(overflow_probability, largest_client, sampling_rate)))


def _shuffled_batches(
    part: np.ndarray, num_steps: int, batch_size: int, generator: np.random.Generator
) -> np.ndarray:
    """``[num_steps, batch_size]`` record ids: epochs of reshuffled ``part``, back to back.

    Each epoch is a permutation of the client's records, so every record is used once per
    epoch. When a batch straddles two epochs, the records already in it are kept out of
    the rest of that batch, so no batch ever holds the same record twice.
    """
    total = num_steps * batch_size
    chunks: list[np.ndarray] = []
    filled = 0
    open_records = np.empty(0, dtype=part.dtype)
    while filled < total:
        epoch = generator.permutation(part)
        if open_records.size:
            needed = batch_size - open_records.size
            in_open = np.isin(epoch, open_records)
            others, repeats = epoch[~in_open], epoch[in_open]
            epoch = np.concatenate(
                [others[:needed], generator.permutation(np.concatenate([others[needed:], repeats]))]
            )
        chunks.append(epoch)
        filled += epoch.size
        open_count = filled % batch_size
        open_records = epoch[epoch.size - open_count :] if open_count else epoch[:0]
        # A batch can span more than one epoch only if batch_size > epoch size, which
        # the caller has refused; the open batch is thus always the epoch's tail.
    return np.concatenate(chunks)[:total].reshape(num_steps, batch_size)


def _assemble(
    images: np.ndarray, labels: np.ndarray, record_ids: np.ndarray, participating: np.ndarray
) -> ClientData:
    mask = record_ids >= 0
    safe = np.where(mask, record_ids, 0)
    x_mask = mask.reshape(mask.shape + (1,) * (images.ndim - 1))
    # Inputs keep their dtype: float32 pixels, or int32 token ids whose padding id is 0.
    x = np.where(x_mask, images[safe], np.zeros((), images.dtype)).astype(images.dtype)
    y_mask = mask.reshape(mask.shape + (1,) * (labels.ndim - 1))  # [N] classes or [N, L] multi-hot
    y = np.where(y_mask, labels[safe], 0).astype(np.int32)
    return ClientData(
        examples={"x": jnp.asarray(x), "y": jnp.asarray(y)},
        example_mask=jnp.asarray(mask.astype(np.float32)),
        client_mask=jnp.asarray(participating.astype(np.float32)),
        record_ids=jnp.asarray(record_ids.astype(np.int32)),
    )


def _check_data(
    images: object, labels: object, partition: object
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    images = np.asarray(images)
    # Images become float32; integer inputs (token or code ids, 0 = padding) stay int32.
    images = images.astype(np.int32 if np.issubdtype(images.dtype, np.integer) else np.float32)
    labels = np.asarray(labels)
    if images.ndim < 2:
        raise ValueError(f"images must have shape [N, *input_shape], got {images.shape}")
    if labels.shape[:1] != images.shape[:1] or labels.ndim > 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array of shape [N] or [N, L] (multi-hot) with N = "
            f"{images.shape[0]}, got shape {labels.shape} and dtype {labels.dtype}"
        )
    if isinstance(partition, np.ndarray) or not isinstance(partition, Sequence) or not partition:
        raise ValueError(
            "partition must be a non-empty list with one index array per client, got "
            f"{type(partition).__name__}"
        )
    parts = []
    for client, part in enumerate(partition):
        part = np.asarray(part)
        if part.ndim != 1 or (part.size and not np.issubdtype(part.dtype, np.integer)):
            raise ValueError(
                f"partition[{client}] must be a 1-D integer array of record indices, got "
                f"shape {part.shape} and dtype {part.dtype}"
            )
        if part.size and (part.min() < 0 or part.max() >= images.shape[0]):
            raise ValueError(
                f"partition[{client}] holds record indices outside [0, {images.shape[0] - 1}]"
            )
        if np.unique(part).size != part.size:
            raise ValueError(f"partition[{client}] lists a record more than once")
        parts.append(part.astype(np.int64))
    return images, labels, parts


def _check_participating(participating: object, num_clients: int) -> np.ndarray:
    if participating is None:
        return np.ones(num_clients, dtype=bool)
    participating = np.asarray(participating)
    if participating.dtype != bool or participating.shape != (num_clients,):
        raise ValueError(
            f"participating must be a bool array of shape [C] = ({num_clients},), got "
            f"shape {participating.shape} and dtype {participating.dtype}"
        )
    return participating


def _capacity(batch_size: object, largest: int, allow_smaller: bool = False) -> int:
    if batch_size is None:
        # At least one slot, so a round whose clients are all empty still has a shape.
        return max(largest, 1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if batch_size < largest and not allow_smaller:
        raise ValueError(
            f"batch_size (the capacity) must be >= the largest client's size {largest} with "
            f"sampling='full' or 'poisson', got {batch_size}; or leave it None"
        )
    return batch_size


def _check_sampling_rate(sampling_rate: object) -> float:
    if (
        sampling_rate is None
        or isinstance(sampling_rate, bool)
        or not isinstance(sampling_rate, (int, float, np.floating))
        or not 0.0 < float(sampling_rate) <= 1.0
    ):
        raise ValueError(
            "sampling_rate must be a number in the half-open interval (0, 1] with "
            f"sampling='poisson', got {sampling_rate!r}"
        )
    return float(sampling_rate)
