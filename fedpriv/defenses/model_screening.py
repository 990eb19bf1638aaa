"""Client-side screening of the model the server sent, before any local training.

A malicious server can send parameters crafted to leak data: an imprint block whose
units share one kernel column and whose biases form a ladder of quantiles (Fowl et al.
2022), or "fishing" parameters that silence every class but one so a single class or
record dominates the update (Wen et al. 2022). A hospital can look at what it received
before it trains, and refuse. Checks, per parameter leaf with two or more axes (the last
axis indexes units, e.g. a Dense kernel ``[in, out]`` or a convolution ``[h, w, in, out]``):

- architecture: the tree structure and shapes must equal those of the last accepted
  model (an inserted imprint block changes them);
- duplicated units: the fraction of units whose column has a near-duplicate (cosine above
  ``duplicate_cosine``) among the layer's other units; trained or randomly initialised
  layers have none, an imprint layer has all;
- unit-norm outliers: robust z-scores of the log column norms within the layer (fishing
  shrinks all but one class's head column);
- change between consecutive global models: robust z-score of each leaf's log relative
  change ``log(||p_t - p_{t-1}|| / ||p_{t-1}||)`` against the changes this client saw in
  earlier accepted rounds (a history of a few rounds is too short for a VAE, so robust
  z-scores stand in for it).

Rejected models never enter the history, so a server cannot drift the baseline by
sending crafted models the client refused.

References:
  Fowl, Geiping, Czaja, Goldblum, Goldstein. "Robbing the Fed: Directly Obtaining Private
  Data in Federated Learning with Modified Models", ICLR 2022, arXiv:2110.13057.
  Wen, Geiping, Fowl, Goldblum, Goldstein. "Fishing for User Data in Large-Batch Federated
  Learning via Gradient Magnification", ICML 2022, arXiv:2202.00580.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import numpy as np

from fedpriv.typing import Params

MAD_TO_STD = 1.4826


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelScreeningConfig:
    """Thresholds of the client's screen.

    Attributes:
      duplicate_cosine: two unit columns with cosine above this count as duplicates.
      max_duplicate_fraction: a layer with a larger fraction of duplicated units is refused.
      norm_z_threshold: refuse when a unit's robust z-score of log column norm exceeds this
        in absolute value.
      norm_scale_floor: least spread (in log units) assumed for column norms.
      change_z_threshold: refuse when a leaf's robust z-score of log relative change
        exceeds this.
      change_scale_floor: least spread (in log units) assumed for the changes.
      min_history: accepted rounds of changes needed before the change check runs.
    """

    duplicate_cosine: float = 0.999
    max_duplicate_fraction: float = 0.05
    norm_z_threshold: float = 8.0
    norm_scale_floor: float = 0.25
    change_z_threshold: float = 6.0
    change_scale_floor: float = 0.25
    min_history: int = 3

    def __post_init__(self):
        checks = {"duplicate_cosine": (0, 1), "max_duplicate_fraction": (0, 1)}
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
                raise ValueError(f"{name} must be in ({low}, {high}), got {value!r}")
        for name in ("norm_z_threshold", "norm_scale_floor", "change_z_threshold", "change_scale_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < np.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(self.min_history, bool) or not isinstance(self.min_history, numbers.Integral) \
                or self.min_history < 2:
            raise ValueError(f"min_history must be an integer >= 2, got {self.min_history!r}")


@dataclasses.dataclass(frozen=True)
class ModelHistory:
    """What a client remembers of the global models it accepted.

    Attributes:
      previous: the last accepted params (host NumPy), or ``None`` before the first.
      log_changes: ``{leaf path: (log relative change, ...)}`` of the accepted rounds.
    """

    previous: Params | None = None
    log_changes: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelScreeningReport:
    """The client's verdict on one received model.

    Attributes:
      accepted: train on it (True) or refuse (False).
      reasons: one line per check that fired, naming the leaf.
      statistics: ``{leaf path: {statistic: value}}`` for every leaf examined.
    """

    accepted: bool
    reasons: tuple[str, ...]
    statistics: dict[str, dict[str, float]]


def _leaves(params: Params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _robust_z(values: np.ndarray, scale_floor: float) -> np.ndarray:
    median = np.median(values)
    return (values - median) / max(MAD_TO_STD * np.median(np.abs(values - median)), scale_floor)


def unit_statistics(kernel, duplicate_cosine: float = 0.999) -> dict[str, float]:
    """Duplicate fraction and log column norms of a leaf whose last axis indexes units.

    Args:
      kernel: array ``[..., units]``.
      duplicate_cosine: cosine above which two columns are duplicates.

    Returns:
      ``{"units", "duplicate_fraction", "largest_duplicate_group"}``; all-zero columns are
      never duplicates (a zero-initialised layer is not crafted).
    """
    columns = np.asarray(kernel, np.float64).reshape(-1, np.shape(kernel)[-1])
    norms = np.linalg.norm(columns, axis=0)
    live = norms > 0
    unit = columns / np.where(live, norms, 1.0)
    cosine = unit.T @ unit
    np.fill_diagonal(cosine, -np.inf)
    duplicated = (cosine > duplicate_cosine) & live[:, None] & live[None, :]
    return {"units": float(columns.shape[1]),
            "duplicate_fraction": float(np.mean(np.any(duplicated, axis=1))),
            "largest_duplicate_group": float(np.max(np.sum(duplicated, axis=1)) + 1 if duplicated.any() else 1)}


def _log_relative_change(new: np.ndarray, old: np.ndarray) -> float:
    return float(np.log(max(np.linalg.norm(new - old), 1e-30) / max(np.linalg.norm(old), 1e-30)))


def screen_model(params: Params, history: ModelHistory = ModelHistory(),
                 config: ModelScreeningConfig = ModelScreeningConfig()) -> ModelScreeningReport:
    """Decides whether a client should train on the model the server sent.

    Args:
      params: the received global params.
      history: what the client remembers of accepted models (``ModelHistory()`` at first).
      config: thresholds.

    Returns:
      A ``ModelScreeningReport``.

    Raises:
      ValueError: if a leaf is not finite (a model with NaN/Inf is refused loudly, as it
        cannot be trained on).

    **Formal guarantees**

    None: a heuristic against known crafted-model attacks. Refusing protects the client's
    data from this round's update entirely; accepting gives no protection beyond what
    other defenses provide, and a server that spreads an attack thinly across rounds, or
    hides imprint units behind small perturbations above ``duplicate_cosine``'s reach,
    can pass.
    """
    leaves = _leaves(params)
    bad = [path for path, leaf in leaves.items() if not np.all(np.isfinite(leaf))]
    if bad:
        raise ValueError(f"received params have non-finite values in {bad}")
    reasons: list[str] = []
    statistics: dict[str, dict[str, float]] = {path: {} for path in leaves}
    if history.previous is not None:
        previous = _leaves(history.previous)
        shapes = {path: leaf.shape for path, leaf in leaves.items()}
        old_shapes = {path: leaf.shape for path, leaf in previous.items()}
        if shapes != old_shapes:
            added = sorted(set(shapes) - set(old_shapes))
            removed = sorted(set(old_shapes) - set(shapes))
            resized = sorted(p for p in set(shapes) & set(old_shapes) if shapes[p] != old_shapes[p])
            reasons.append(f"architecture changed: added {added}, removed {removed}, reshaped {resized}")
    for path, leaf in leaves.items():
        if leaf.ndim < 2 or leaf.shape[-1] < 2:
            continue
        stats = unit_statistics(leaf, config.duplicate_cosine)
        norms = np.linalg.norm(leaf.reshape(-1, leaf.shape[-1]), axis=0)
        log_norms = np.log(np.maximum(norms, 1e-30))
        stats["max_abs_norm_z"] = float(np.max(np.abs(_robust_z(log_norms, config.norm_scale_floor))))
        statistics[path].update(stats)
        if stats["duplicate_fraction"] > config.max_duplicate_fraction:
            reasons.append(f"{path}: {stats['duplicate_fraction']:.0%} of {int(stats['units'])} units duplicate "
                           f"another (largest group {int(stats['largest_duplicate_group'])}; imprint-style)")
        if stats["max_abs_norm_z"] > config.norm_z_threshold:
            reasons.append(f"{path}: unit-norm z-score {stats['max_abs_norm_z']:.1f} beyond "
                           f"±{config.norm_z_threshold} (magnified or silenced units)")
    if history.previous is not None and not reasons:
        for path, leaf in leaves.items():
            change = _log_relative_change(leaf, previous[path])
            statistics[path]["log_relative_change"] = change
            past = np.asarray(history.log_changes.get(path, ()))
            if len(past) >= config.min_history:
                spread = MAD_TO_STD * np.median(np.abs(past - np.median(past)))
                z = float((change - np.median(past)) / max(spread, config.change_scale_floor))
                statistics[path]["change_z"] = z
                if z > config.change_z_threshold:
                    reasons.append(f"{path}: change z-score {z:.1f} above {config.change_z_threshold} "
                                   f"(log relative change {change:.2f}, history median {np.median(past):.2f})")
    return ModelScreeningReport(accepted=not reasons, reasons=tuple(reasons), statistics=statistics)


def record_model(history: ModelHistory, params: Params) -> ModelHistory:
    """The history after the client accepted ``params`` (call only for accepted models).

    Raises:
      ValueError: if the architecture differs from the previous accepted model.
    """
    leaves = _leaves(params)
    stored = jax.tree_util.tree_map(lambda leaf: np.array(leaf, np.float64), params)
    if history.previous is None:
        return ModelHistory(previous=stored, log_changes={})
    previous = _leaves(history.previous)
    if {p: l.shape for p, l in leaves.items()} != {p: l.shape for p, l in previous.items()}:
        raise ValueError("record_model: the architecture differs from the last accepted model; "
                         "screen_model refuses such a model")
    changes = {path: history.log_changes.get(path, ()) + (_log_relative_change(leaf, previous[path]),)
               for path, leaf in leaves.items()}
    return ModelHistory(previous=stored, log_changes=changes)
