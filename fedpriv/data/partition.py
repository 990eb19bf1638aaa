"""Splitting a cohort into hospitals (clients).

Every scheme returns ``list[np.ndarray]``: one sorted int64 array of record indices per
client, disjoint and together covering the cohort. The schemes model the kinds of
heterogeneity found between real hospitals:

* ``iid``: random equal shares, the textbook baseline;
* ``dirichlet``: label skew, each class spread over clients by Dirichlet(alpha)
  proportions (Hsu et al., 2019, arXiv:1909.06335);
* ``quantity_skew``: clients of very different sizes, sizes ~ Dirichlet(alpha);
* ``by_site``: each hospital its own case mix (Dirichlet(alpha) over classes per site)
  plus its own scanner (``fedpriv.data.sites``): label and feature skew together.

Smaller ``alpha`` means more heterogeneous.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedpriv.data._validation import check_generator, check_int, check_positive_float
from fedpriv.data.cohort import ImageCohort
from fedpriv.data.sites import apply_site_shift, sample_scanner_profiles

SCHEMES = ("iid", "dirichlet", "quantity_skew", "by_site")

# Rejection sampling for min_records: enough for any sensible setting, and a clear error
# (rather than a hang) for impossible ones such as alpha = 0.001 with 50 clients.
_MAX_ATTEMPTS = 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartitionConfig:
    """How a cohort is split into hospitals.

    Attributes:
      scheme: one of ``"iid"``, ``"dirichlet"``, ``"quantity_skew"``, ``"by_site"``.
      num_clients: number of hospitals, >= 1.
      alpha: Dirichlet concentration, > 0 (smaller = more skewed); unused by ``iid``.
      min_records: fewest records any client may hold, >= 1.

    Raises:
      ValueError: naming the field, the value and what is allowed.
    """

    scheme: str
    num_clients: int
    alpha: float = 0.5
    min_records: int = 1

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        check_int("num_clients", self.num_clients, minimum=1)
        check_positive_float("alpha", self.alpha)
        check_int("min_records", self.min_records, minimum=1)


def partition_cohort(
    cohort: ImageCohort, config: PartitionConfig, generator: np.random.Generator
) -> tuple[list[np.ndarray], ImageCohort]:
    """Splits a cohort into hospitals according to ``config``.

    Args:
      cohort: the cohort to split.
      config: the scheme and its parameters.
      generator: host-side generator (``fedpriv.keys.numpy_generator`` of the ``data`` stream).

    Returns:
      ``(partition, cohort_after_site_shift)``: the record indices of each client, and the
      cohort as the hospitals see it — the input cohort itself unless the scheme is
      ``by_site``, whose clients' images pass through their own scanner profile.

    Raises:
      ValueError: if there are more clients than records or the scheme's constraints
        cannot be met.
    """
    generator = check_generator("generator", generator)
    if config.scheme == "iid":
        _check_sizes(cohort.num_records, config.num_clients, config.min_records)
        return partition_iid(cohort.num_records, config.num_clients, generator), cohort
    if config.scheme == "dirichlet":
        partition = partition_dirichlet(
            cohort.labels, config.num_clients, config.alpha, generator, config.min_records
        )
        return partition, cohort
    if config.scheme == "quantity_skew":
        partition = partition_quantity_skew(
            cohort.num_records, config.num_clients, config.alpha, generator, config.min_records
        )
        return partition, cohort
    partition = partition_by_site(
        cohort.labels, config.num_clients, config.alpha, generator, config.min_records
    )
    profiles = sample_scanner_profiles(config.num_clients, generator)
    return partition, apply_site_shift(cohort, partition, profiles, generator)


def partition_iid(
    num_records: int, num_clients: int, generator: np.random.Generator
) -> list[np.ndarray]:
    """Random shares whose sizes differ by at most one record.

    Args:
      num_records: cohort size ``N``.
      num_clients: number of clients, in ``[1, N]``.
      generator: host-side generator.

    Returns:
      One sorted index array per client.

    Raises:
      ValueError: if ``num_clients`` exceeds ``num_records``.
    """
    num_records = check_int("num_records", num_records, minimum=1)
    _check_sizes(num_records, num_clients, 1)
    generator = check_generator("generator", generator)
    return [np.sort(part) for part in np.array_split(generator.permutation(num_records), num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    generator: np.random.Generator,
    min_records: int = 1,
) -> list[np.ndarray]:
    """Label skew: each class is spread over clients by Dirichlet(alpha) proportions.

    Resamples until every client holds at least ``min_records`` records.

    Args:
      labels: ``[N]`` integer labels of the cohort.
      num_clients: number of clients, in ``[1, N]``.
      alpha: Dirichlet concentration, > 0; small values give each client few classes.
      generator: host-side generator.
      min_records: fewest records any client may hold, >= 1.

    Returns:
      One sorted index array per client.

    References:
      Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
      Federated Visual Classification", 2019, arXiv:1909.06335.

    Raises:
      ValueError: if an argument is out of range, or no draw gives every client
        ``min_records`` records within the attempt budget.
    """
    labels = _check_labels(labels)
    num_clients, alpha, min_records = _check_common(labels.size, num_clients, alpha, min_records)
    generator = check_generator("generator", generator)
    members_of = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    for _ in range(_MAX_ATTEMPTS):
        assignment = np.empty(labels.size, dtype=np.int64)
        for members in members_of:
            members = generator.permutation(members)
            shares = generator.dirichlet(np.full(num_clients, alpha))
            # Cut the shuffled class at the cumulative shares: position j of the class
            # goes to the client whose share interval contains j.
            cuts = np.round(np.cumsum(shares)[:-1] * members.size)
            assignment[members] = np.searchsorted(cuts, np.arange(members.size), side="right")
        if np.bincount(assignment, minlength=num_clients).min() >= min_records:
            return _parts(assignment, num_clients)
    raise _budget_error("dirichlet", num_clients, alpha, min_records)


def partition_quantity_skew(
    num_records: int,
    num_clients: int,
    alpha: float,
    generator: np.random.Generator,
    min_records: int = 1,
) -> list[np.ndarray]:
    """Random shares whose sizes follow Dirichlet(alpha) proportions.

    Every client first gets ``min_records`` records; the rest are dealt out as a
    multinomial draw with Dirichlet(alpha) probabilities. This always succeeds (no
    rejection) and keeps labels i.i.d. within each client.

    Args:
      num_records: cohort size ``N``.
      num_clients: number of clients, in ``[1, N]``.
      alpha: Dirichlet concentration, > 0; small values give very unequal sizes.
      generator: host-side generator.
      min_records: fewest records any client may hold, >= 1.

    Returns:
      One sorted index array per client.

    Raises:
      ValueError: if an argument is out of range.
    """
    num_records = check_int("num_records", num_records, minimum=1)
    num_clients, alpha, min_records = _check_common(num_records, num_clients, alpha, min_records)
    generator = check_generator("generator", generator)
    shares = generator.dirichlet(np.full(num_clients, alpha))
    sizes = min_records + generator.multinomial(num_records - num_clients * min_records, shares)
    order = generator.permutation(num_records)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def partition_by_site(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    generator: np.random.Generator,
    min_records: int = 1,
) -> list[np.ndarray]:
    """Each hospital its own case mix: class prevalence ~ Dirichlet(alpha) per site.

    Where ``partition_dirichlet`` spreads each class over sites, this draws each site's
    case mix (a referral centre sees mostly masses, a screening site mostly normals) and
    sends every record to a site with probability proportional to that site's
    prevalence of the record's class. Resamples until every site holds at least
    ``min_records`` records. Pair with ``fedpriv.data.sites`` for scanner differences
    (``partition_cohort`` does both).

    Args:
      labels: ``[N]`` integer labels of the cohort.
      num_clients: number of sites, in ``[1, N]``.
      alpha: Dirichlet concentration of each site's case mix, > 0.
      generator: host-side generator.
      min_records: fewest records any site may hold, >= 1.

    Returns:
      One sorted index array per site.

    Raises:
      ValueError: if an argument is out of range, or no draw gives every client
        ``min_records`` records within the attempt budget.
    """
    labels = _check_labels(labels)
    num_clients, alpha, min_records = _check_common(labels.size, num_clients, alpha, min_records)
    generator = check_generator("generator", generator)
    classes, label_index = np.unique(labels, return_inverse=True)
    for _ in range(_MAX_ATTEMPTS):
        case_mix = generator.dirichlet(np.full(classes.size, alpha), size=num_clients)  # [C, K]
        # Tiny alphas can underflow a whole column to zero; a floor keeps p(site | class)
        # defined without changing any distribution that did not underflow.
        case_mix = np.maximum(case_mix, 1e-300)
        site_given_class = case_mix / case_mix.sum(axis=0, keepdims=True)
        cumulative = np.cumsum(site_given_class, axis=0)[:, label_index]  # [C, N]
        draws = generator.random(labels.size)
        assignment = np.minimum((draws[None, :] >= cumulative).sum(axis=0), num_clients - 1)
        if np.bincount(assignment, minlength=num_clients).min() >= min_records:
            return _parts(assignment, num_clients)
    raise _budget_error("by_site", num_clients, alpha, min_records)


def _parts(assignment: np.ndarray, num_clients: int) -> list[np.ndarray]:
    order = np.argsort(assignment, kind="stable")
    sizes = np.bincount(assignment, minlength=num_clients)
    return [part.astype(np.int64) for part in np.split(order, np.cumsum(sizes)[:-1])]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-D integer array, got shape {labels.shape} "
            f"and dtype {labels.dtype}"
        )
    return labels


def _check_common(
    num_records: int, num_clients: object, alpha: object, min_records: object
) -> tuple[int, float, int]:
    num_clients = check_int("num_clients", num_clients, minimum=1)
    alpha = check_positive_float("alpha", alpha)
    min_records = check_int("min_records", min_records, minimum=1)
    _check_sizes(num_records, num_clients, min_records)
    return num_clients, alpha, min_records


def _check_sizes(num_records: int, num_clients: object, min_records: int) -> None:
    num_clients = check_int("num_clients", num_clients, minimum=1)
    if num_clients > num_records:
        raise ValueError(
            f"num_clients must be <= the number of records ({num_records}), got {num_clients}"
        )
    if num_clients * min_records > num_records:
        raise ValueError(
            f"min_records={min_records} for each of {num_clients} clients needs "
            f"{num_clients * min_records} records, but the cohort has {num_records}"
        )


def _budget_error(scheme: str, num_clients: int, alpha: float, min_records: int) -> ValueError:
    return ValueError(
        f"{scheme} partition: no draw in {_MAX_ATTEMPTS} attempts gave each of "
        f"{num_clients} clients >= {min_records} records with alpha={alpha}; use a larger "
        "alpha, fewer num_clients or a smaller min_records"
    )
