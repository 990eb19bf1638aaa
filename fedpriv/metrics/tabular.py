"""Per-feature accuracy of reconstructed table rows (TabLeak's metric).

A categorical feature counts as recovered when the category is exact; a numeric feature
when it lies within ``tolerance`` of the true value. TabLeak sets the tolerance of each
numeric feature to ``0.319`` times the feature's standard deviation in the data
(``create_tolerance_map`` in the authors' code): for a Gaussian feature, a guess within
``0.319`` sigma of the truth covers the central quarter of the mass
(``P(|Z| < 0.319) = 0.25``), so a numeric hit is about as hard as a categorical hit
among four equally likely categories. The tolerance is relative to the feature's spread,
not to its unit, so features of any scale count alike.

Rows are paired with ``fedpriv.metrics.assign_records`` on the fraction of features
wrong, as the image scorer pairs images; a record with no reconstruction counts every
feature as wrong.

References:
  Vero, Balunović, Dimitrov, Vechev. "TabLeak: Tabular Data Leakage in Federated
  Learning", ICML 2023, arXiv 2210.01785 (its evaluation metric; the tolerance map of the
  authors' code, github.com/eth-sri/tableak).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedpriv.metrics.matching import assign_records

# Numeric tolerance in units of the feature's standard deviation (TabLeak).
TABLEAK_TOLERANCE = 0.319


def numeric_tolerance(values: np.ndarray, is_categorical: np.ndarray, factor: float = TABLEAK_TOLERANCE) -> np.ndarray:
    """``[F]`` tolerance per feature: ``factor`` times each numeric column's standard deviation
    over ``values [N, F]`` (0 for categorical columns, which must match exactly)."""
    values = np.asarray(values, np.float64)
    return np.where(np.asarray(is_categorical), 0.0, factor * values.std(axis=0))


def feature_hits(recovered: np.ndarray, true: np.ndarray, is_categorical: np.ndarray,
                 tolerance: np.ndarray) -> np.ndarray:
    """``[..., F]`` bool: each feature of ``recovered`` matches ``true`` (raw values, categories as indices)."""
    recovered, true = np.asarray(recovered, np.float64), np.asarray(true, np.float64)
    if recovered.shape != true.shape or recovered.shape[-1] != len(is_categorical):
        raise ValueError(f"recovered {recovered.shape} and true {true.shape} rows must have the same shape with "
                         f"{len(is_categorical)} features")
    exact = np.round(recovered) == np.round(true)
    within = np.abs(recovered - true) <= np.asarray(tolerance) + 1e-9 * np.abs(true)
    return np.where(np.asarray(is_categorical, bool), exact, within)


@dataclasses.dataclass(frozen=True)
class TabularRecordScores:
    """Hits of every true record after pairing.

    Attributes:
      hits: ``[M, F]`` bool per true record (all False for a missing record).
      truth_index: the true record of each pair; reconstruction_index: its reconstruction.
      missing: true records left without a reconstruction.
    """

    hits: np.ndarray
    truth_index: np.ndarray
    reconstruction_index: np.ndarray
    missing: np.ndarray


def score_table_records(recovered: np.ndarray, true: np.ndarray, is_categorical: np.ndarray,
                        tolerance: np.ndarray) -> TabularRecordScores:
    """Pairs ``[N, F]`` reconstructions with ``[M, F]`` true rows on the fraction of features
    wrong (``assign_records``, no ground-truth pick) and returns every true row's hits."""
    recovered, true = np.asarray(recovered, np.float64), np.asarray(true, np.float64)
    pairs = (len(recovered), len(true), true.shape[-1])
    pairwise = feature_hits(np.broadcast_to(recovered[:, None], pairs), np.broadcast_to(true[None], pairs),
                            is_categorical, tolerance)
    assignment = assign_records(1.0 - pairwise.mean(axis=-1))
    hits = np.zeros(true.shape, bool)
    # With more reconstructions than records a record may be nearest to several: keep its best.
    for r, t in zip(assignment.reconstruction_index, assignment.truth_index):
        if pairwise[r, t].sum() > hits[t].sum():
            hits[t] = pairwise[r, t]
    return TabularRecordScores(hits, assignment.truth_index, assignment.reconstruction_index, assignment.missing)


def tabular_accuracy(hits: np.ndarray, is_categorical: np.ndarray) -> dict[str, float]:
    """Mean accuracy over ``[M, F]`` hits: all features, categorical ones, numeric ones (NaN when a
    table has none of that type)."""
    hits, is_categorical = np.asarray(hits, bool), np.asarray(is_categorical, bool)
    part = lambda mask: float(hits[:, mask].mean()) if mask.any() and hits.shape[0] else float("nan")
    return {"accuracy": part(np.ones_like(is_categorical)), "categorical_accuracy": part(is_categorical),
            "numeric_accuracy": part(~is_categorical)}
