"""Membership inference: was this record (or this hospital) in the training data?

Two attacks, both returning one score per candidate record, higher meaning "more likely
a member"; choosing a threshold and scoring against the truth is ``fedpriv.metrics``'
job (:mod:`fedpriv.metrics.roc`), the only layer that knows who the members are.

- :func:`loss_threshold_scores` (Yeom et al. 2018): ``score = -loss`` of the target
  model on the record. Training records have lower loss, but so do easy records: one
  global threshold cannot tell them apart, so the attack is weak at low false-positive
  rates.
- :func:`lira_attack` (LiRA, Carlini et al. 2022): train shadow models on random halves
  of the attacker's data, and for every candidate fit Gaussians to its logit-scaled
  confidence ``phi = log(p / (1 - p))`` under the shadows that trained on it (IN) and
  those that did not (OUT). The score is a per-record likelihood-ratio test, which
  calibrates away how easy each record is. *Online* LiRA uses both Gaussians; *offline*
  LiRA only the OUT one, with a one-sided test. Variances are per example or one global
  (pooled) value per side.

Client-level membership (was hospital ``c`` one of the training clients?) aggregates
the record scores of the client's records: :func:`client_membership_scores`.

The attacks take only public things: the model, the target's params, the attacker's
population data and the candidate records. No ground-truth membership goes in.

References:
  Yeom, Giacomelli, Fredrikson, Jha. "Privacy Risk in Machine Learning: Analyzing the
  Connection to Overfitting", IEEE CSF 2018, arXiv:1709.01604.
  Carlini, Chien, Nasr, Song, Terzis, Tramèr. "Membership Inference Attacks From First
  Principles", IEEE S&P 2022, arXiv:2112.03570.
  Kairouz, Oh, Viswanath. "The Composition Theorem for Differential Privacy", ICML 2015,
  arXiv:1311.0776 (DP as a bound on hypothesis tests: TPR <= e^eps * FPR + delta).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from fedpriv.attacks.shadow_models import (MODEL_BATCHINGS, ShadowTrainingConfig, _check_count, _check_records,
                                           balanced_inclusion_masks, logit_confidence, logit_confidences,
                                           train_models)
from fedpriv.typing import Model, Params, PRNGKey

LIRA_VARIANTS = ("online", "offline")
LIRA_VARIANCES = ("per_example", "global")
CLIENT_AGGREGATES = ("mean", "sum", "max")
# Floor on every fitted variance, so a record whose shadows agree to the last bit still
# gets a finite likelihood (Carlini et al.'s code adds 1e-30 to the std for the same reason).
MIN_VARIANCE = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiraConfig:
    """LiRA's hyperparameters.

    Attributes:
      num_shadows: shadow models ``M``. Every record of the attacker's pool is IN exactly
        ``M // 2`` shadows (:func:`balanced_inclusion_masks`). Online LiRA needs ``M`` even
        (balanced IN/OUT) and ``>= 4``; offline LiRA needs ``M >= 3``, so every fitted
        Gaussian sees at least 2 samples. Carlini et al. train 256 on CIFAR-10 (and show 64
        suffice for most of the gain); 16 already separates memorised records of a small MLP.
      training: how every shadow is trained; it should imitate the target's training
        (same steps, optimizer, batching and DP plan), because LiRA compares the target
        with the shadows.
      variant: ``"online"`` (IN and OUT Gaussians, likelihood ratio) or ``"offline"``
        (OUT Gaussian only, one-sided test; shadows may be trained before the candidates
        are known).
      variance: ``"per_example"`` (each record's own variances) or ``"global"`` (one
        variance per side, pooled over records; better with few shadows).
      batching: ``"vmap"`` or ``"loop"`` over shadows (see :func:`train_models`).

    Raises:
      ValueError: on construction, naming the field, the value and what is allowed.
    """

    num_shadows: int
    training: ShadowTrainingConfig
    variant: str = "online"
    variance: str = "per_example"
    batching: str = "vmap"

    def __post_init__(self):
        if self.variant not in LIRA_VARIANTS:
            raise ValueError(f"variant must be one of {list(LIRA_VARIANTS)}, got {self.variant!r}")
        if self.variance not in LIRA_VARIANCES:
            raise ValueError(f"variance must be one of {list(LIRA_VARIANCES)}, got {self.variance!r}")
        if self.batching not in MODEL_BATCHINGS:
            raise ValueError(f"batching must be one of {list(MODEL_BATCHINGS)}, got {self.batching!r}")
        if not isinstance(self.training, ShadowTrainingConfig):
            raise ValueError(f"training must be a ShadowTrainingConfig, got {type(self.training).__name__}")
        minimum = 4 if self.variant == "online" else 3
        if (isinstance(self.num_shadows, bool) or not isinstance(self.num_shadows, numbers.Integral)
                or self.num_shadows < minimum):
            raise ValueError(f"num_shadows must be an integer >= {minimum} for {self.variant} LiRA "
                             f"(at least 2 shadows per fitted Gaussian), got {self.num_shadows!r}")
        if self.variant == "online" and self.num_shadows % 2:
            raise ValueError(f"num_shadows must be even for online LiRA (every record IN exactly half "
                             f"of the shadows), got {self.num_shadows!r}")
        object.__setattr__(self, "num_shadows", int(self.num_shadows))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShadowModels:
    """Shadow models trained on the attacker's pool of ``P`` records.

    Attributes:
      params: params with a leading shadow axis ``M`` on every leaf.
      inclusion_mask: ``[M, P]`` bool, which pool records each shadow trained on.
      confidences: ``[M, P]`` logit-scaled confidence of each shadow on each pool record.
    """

    params: Params
    inclusion_mask: np.ndarray
    confidences: np.ndarray


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiraResult:
    """LiRA's output for ``N`` candidates.

    Attributes:
      scores: ``[N]`` membership scores (higher = more likely a member).
      target_confidences: ``[N]`` logit-scaled confidence of the target on each candidate.
      shadow_confidences: ``[M, N]`` the same for every shadow.
      shadow_inclusion: ``[M, N]`` bool, which shadows trained on each candidate.
    """

    scores: np.ndarray
    target_confidences: np.ndarray
    shadow_confidences: np.ndarray
    shadow_inclusion: np.ndarray


def loss_threshold_scores(model: Model, params: Params, x, y) -> np.ndarray:
    """Yeom et al.'s loss attack: ``score = -loss`` of the target model on each record.

    Yeom et al. predict "member" when the loss is below the expected training loss; the
    threshold is a choice along the ROC curve, left to ``fedpriv.metrics``.

    Args:
      model: the target model.
      params: the target's params.
      x: ``[N, *model.input_shape]`` candidate records.
      y: ``[N]`` their labels.

    Returns:
      ``[N]`` float64 scores.

    References:
      Yeom et al. 2018, arXiv:1709.01604 (their loss-threshold adversary).
    """
    x, y, _ = _check_records(model, x, y, None, models=None)
    return -np.asarray(_loss_jit(model.per_example_loss, params, x, y), dtype=np.float64)


_loss_jit = jax.jit(lambda per_example_loss, params, x, y: per_example_loss(params, {"x": x, "y": y}),
                    static_argnums=0)


def train_shadow_models(model: Model, x, y, config: LiraConfig, key: PRNGKey, *,
                        dp_plan: Any = None) -> ShadowModels:
    """Trains ``config.num_shadows`` shadows on random halves of the attacker's pool.

    Args:
      model: the model architecture (public).
      x: ``[P, *model.input_shape]`` the attacker's pool of records.
      y: ``[P]`` their labels.
      config: LiRA's config (its ``training`` recipe is used for every shadow).
      key: the attack key; inclusion masks, inits and training randomness are derived
        from it by ``fold_in`` (indices 0, 1, 2).
      dp_plan: ``None`` or the DP-SGD plan to train the shadows with (to imitate a DP
        target); see :func:`train_models`.

    Returns:
      :class:`ShadowModels` with balanced inclusion masks and the pool confidences.

    Raises:
      ValueError: for mismatched lengths or a bad config (naming the field).
    """
    if not isinstance(config, LiraConfig):
        raise ValueError(f"config must be a LiraConfig, got {type(config).__name__}")
    x, y, _ = _check_records(model, x, y, None, models=None)
    num_shadows = config.num_shadows
    inclusion = balanced_inclusion_masks(jax.random.fold_in(key, 0), num_shadows, x.shape[0])
    init_keys = jax.random.split(jax.random.fold_in(key, 1), num_shadows)
    training_keys = jax.random.split(jax.random.fold_in(key, 2), num_shadows)
    params = train_models(model, init_keys, x, y, inclusion, config.training, keys=training_keys,
                          dp_plan=dp_plan, batching=config.batching)
    confidences = np.asarray(logit_confidences(model, params, x, y), dtype=np.float64)
    return ShadowModels(params=params, inclusion_mask=inclusion, confidences=confidences)


def lira_scores(target_confidences, shadow_confidences, shadow_inclusion, *, variant: str = "online",
                variance: str = "per_example") -> np.ndarray:
    """LiRA's per-record test statistic from confidences (pure NumPy, no model needed).

    With ``phi`` the target's confidence on record ``i``, ``(mu_in, s_in)`` and
    ``(mu_out, s_out)`` the mean and standard deviation of the IN and OUT shadows'
    confidences on ``i``:

    - online: ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``, the
      log-likelihood ratio (Carlini et al. Alg. 1);
    - offline: ``-log Pr[Z > phi]`` with ``Z ~ N(mu_out, s_out^2)``, a one-sided test
      that increases with ``phi`` (Carlini et al.'s offline variant; the log survival
      function keeps the resolution in the far tail, where members sit).

    ``variance="per_example"`` uses each record's sample standard deviation (``ddof=1``);
    ``"global"`` pools the within-record variances over all records (one value per
    side). Deviation from Carlini et al.'s code, which takes the standard deviation of all
    confidences together and so also counts the spread between records' means.

    Args:
      target_confidences: ``[N]``.
      shadow_confidences: ``[M, N]``.
      shadow_inclusion: ``[M, N]``, non-zero where shadow ``m`` trained on record ``i``.
      variant: ``"online"`` or ``"offline"``.
      variance: ``"per_example"`` or ``"global"``.

    Returns:
      ``[N]`` float64 scores, higher = more likely a member.

    Raises:
      ValueError: for mismatched shapes, non-finite confidences, a record with fewer than
        2 IN (online) or 2 OUT shadows, or an unknown variant or variance.

    References:
      Carlini et al. 2022, arXiv:2112.03570 (Algorithm 1, online LiRA, and its offline variant).
    """
    if variant not in LIRA_VARIANTS:
        raise ValueError(f"variant must be one of {list(LIRA_VARIANTS)}, got {variant!r}")
    if variance not in LIRA_VARIANCES:
        raise ValueError(f"variance must be one of {list(LIRA_VARIANCES)}, got {variance!r}")
    target = np.asarray(target_confidences, dtype=np.float64)
    shadows = np.asarray(shadow_confidences, dtype=np.float64)
    inclusion = np.asarray(shadow_inclusion) != 0
    if target.ndim != 1 or target.shape[0] < 1:
        raise ValueError(f"target_confidences must have shape [N >= 1], got {target.shape}")
    if shadows.ndim != 2 or shadows.shape[1] != target.shape[0] or shadows.shape[0] < 1:
        raise ValueError(f"shadow_confidences must have shape [num_shadows >= 1, N={target.shape[0]}], "
                         f"got {shadows.shape}")
    if inclusion.shape != shadows.shape:
        raise ValueError(f"shadow_inclusion must have shape {list(shadows.shape)} like shadow_confidences, "
                         f"got {inclusion.shape}")
    for field, values in (("target_confidences", target), ("shadow_confidences", shadows)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{field} must be finite, got {np.sum(~np.isfinite(values))} non-finite values")

    mean_out, var_out = _gaussian_fit(shadows, ~inclusion, variance, "OUT")
    if variant == "offline":
        z = (target - mean_out) / np.sqrt(var_out)
        return -special.log_ndtr(-z)  # -log Pr[Z > phi]
    mean_in, var_in = _gaussian_fit(shadows, inclusion, variance, "IN")
    return _log_normal_pdf(target, mean_in, var_in) - _log_normal_pdf(target, mean_out, var_out)


def _gaussian_fit(values: np.ndarray, mask: np.ndarray, variance: str, side: str):
    counts = mask.sum(axis=0)
    if np.any(counts < 2):
        worst = int(np.argmin(counts))
        raise ValueError(f"shadow_inclusion gives record {worst} only {int(counts[worst])} {side} shadow(s); "
                         f"LiRA needs at least 2 {side} shadows per record")
    means = np.where(mask, values, 0.0).sum(axis=0) / counts
    squares = np.where(mask, (values - means) ** 2, 0.0).sum(axis=0)
    if variance == "per_example":
        variances = squares / (counts - 1)
    else:
        variances = np.full_like(means, squares.sum() / (counts - 1).sum())
    return means, np.maximum(variances, MIN_VARIANCE)


def _log_normal_pdf(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2.0 * math.pi * var)


def lira_attack(model: Model, target_params: Params, candidate_x, candidate_y, population_x, population_y,
                config: LiraConfig, key: PRNGKey, *, dp_plan: Any = None) -> LiraResult:
    """LiRA against one target model: a membership score for every candidate record.

    The attacker's pool is the candidates followed by its population records; the shadows
    train on random halves of the pool (:func:`train_shadow_models`), so every candidate
    is IN exactly ``M // 2`` shadows. Online LiRA uses them all; offline LiRA only the
    OUT ones (Carlini et al. evaluate offline LiRA on the OUT models of the same shadow
    set). For offline LiRA with shadows trained before the candidates are known, call
    :func:`train_shadow_models` on the population, :func:`logit_confidences` on the
    candidates and :func:`lira_scores` with an all-False ``shadow_inclusion``.

    Args:
      model: the model architecture.
      target_params: the target model's params (what the attacker observed).
      candidate_x: ``[N, *model.input_shape]`` records whose membership is in question.
      candidate_y: ``[N]`` their labels.
      population_x: ``[P, *model.input_shape]`` further records from the same
        distribution (``P = 0`` is allowed: then the pool is the candidates alone).
      population_y: ``[P]`` their labels.
      config: LiRA's config.
      key: the attack key.
      dp_plan: ``None`` or a DP-SGD plan the shadows are trained with (to imitate a DP
        target; its ``steps`` and ``sampling_rate`` must match ``config.training``).

    Returns:
      :class:`LiraResult` with ``[N]`` scores, higher = more likely a member.

    Raises:
      ValueError: for mismatched lengths or shapes, or a bad config, naming the field.

    **Formal guarantees**

    This is an attack; the guarantee it meets is the target's. If the target's training
    is ``(epsilon, delta)``-DP for add/remove-one record, then for every candidate and
    every threshold ``t``, ``Pr[score >= t | member] <= e^epsilon * Pr[score >= t |
    non-member] + delta`` (over the training randomness, with the rest of the data set
    fixed), i.e. ``TPR <= e^epsilon * FPR + delta`` at every point of the ROC curve
    (Kairouz et al. 2015). It bounds this attack and every other one. Nothing is bounded
    for a non-private target.

    References:
      Carlini et al. 2022, arXiv:2112.03570.
    """
    if not isinstance(config, LiraConfig):
        raise ValueError(f"config must be a LiraConfig, got {type(config).__name__}")
    candidate_x, candidate_y, _ = _check_records(model, candidate_x, candidate_y, None, models=None,
                                                 x_name="candidate_x", y_name="candidate_y")
    population_x, population_y, _ = _check_records(model, population_x, population_y, None, models=None,
                                                   x_name="population_x", y_name="population_y",
                                                   allow_empty=True)
    num_candidates = candidate_x.shape[0]
    pool_x = jnp.concatenate([candidate_x, population_x])
    pool_y = jnp.concatenate([candidate_y, population_y])
    shadows = train_shadow_models(model, pool_x, pool_y, config, key, dp_plan=dp_plan)
    target = np.asarray(logit_confidence(model, target_params, candidate_x, candidate_y), dtype=np.float64)
    shadow_confidences = shadows.confidences[:, :num_candidates]
    shadow_inclusion = shadows.inclusion_mask[:, :num_candidates]
    scores = lira_scores(target, shadow_confidences, shadow_inclusion, variant=config.variant,
                         variance=config.variance)
    return LiraResult(scores=scores, target_confidences=target, shadow_confidences=shadow_confidences,
                      shadow_inclusion=shadow_inclusion)


def client_membership_scores(record_scores, record_clients, *, num_clients: int | None = None,
                             aggregate: str = "mean") -> np.ndarray:
    """Client-level membership: one score per client from its records' scores.

    Was hospital ``c`` one of the training clients? If it was, all of its records were
    members, so their record scores (e.g. LiRA's) shift together; aggregating them gives
    a much stronger test than any one record.

    - ``"mean"``: the mean record score (default; comparable across client sizes).
    - ``"sum"``: the summed scores. For LiRA's online log-likelihood ratios this is the
      joint log-likelihood ratio of the client's records if they were independent, the
      Neyman-Pearson test under that assumption; it grows with the client's size.
    - ``"max"``: the most member-like record (robust when only some records were used).

    Args:
      record_scores: ``[N]`` record scores (higher = more likely a member).
      record_clients: ``[N]`` integer client index of each record, in ``[0, num_clients)``.
        This is public knowledge in the client-level game (the attacker holds the
        candidate hospital's records), not the membership ground truth.
      num_clients: number of clients ``C``; default ``max(record_clients) + 1``.
      aggregate: ``"mean"``, ``"sum"`` or ``"max"``.

    Returns:
      ``[C]`` float64 client scores.

    Raises:
      ValueError: for mismatched lengths, a client index out of range, a client with no
        records, non-finite scores, or an unknown ``aggregate``.

    **Formal guarantees**

    - Record-level DP (unit: one record) protects a client of ``k`` records only by
      group privacy: ``(k * epsilon, k * e^((k - 1) * epsilon) * delta)`` (Dwork and
      Roth 2014, Thm. 2.2 for ``delta = 0``), which is vacuous for a hospital of hundreds
      of records. Client-level DP (``DPFedAvgPlan``, unit: one client) bounds this test by
      ``TPR <= e^epsilon * FPR + delta`` directly.

    References:
      Carlini et al. 2022, arXiv:2112.03570 (the record scores).
      Dwork, Roth. "The Algorithmic Foundations of Differential Privacy", 2014 (group
      privacy).
      McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
      Models", ICLR 2018, arXiv:1710.06963 (client-level DP).
    """
    if aggregate not in CLIENT_AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(CLIENT_AGGREGATES)}, got {aggregate!r}")
    scores = np.asarray(record_scores, dtype=np.float64)
    clients = np.asarray(record_clients)
    if scores.ndim != 1 or scores.shape[0] < 1:
        raise ValueError(f"record_scores must have shape [N >= 1], got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"record_scores must be finite, got {np.sum(~np.isfinite(scores))} non-finite values")
    if clients.shape != scores.shape:
        raise ValueError(f"record_clients must have shape {list(scores.shape)} like record_scores, "
                         f"got {clients.shape}")
    if not np.issubdtype(clients.dtype, np.integer) or clients.min() < 0:
        raise ValueError(f"record_clients must hold non-negative integers, got dtype {clients.dtype} "
                         f"and minimum {clients.min()}")
    if num_clients is None:
        num_clients = int(clients.max()) + 1
    num_clients = _check_count(num_clients, "num_clients", 1)
    if clients.max() >= num_clients:
        raise ValueError(f"record_clients must be < num_clients={num_clients}, got {int(clients.max())}")
    counts = np.bincount(clients, minlength=num_clients)
    if np.any(counts == 0):
        raise ValueError(f"record_clients gives no record to client(s) {np.flatnonzero(counts == 0).tolist()}; "
                         f"every client needs at least one record")
    if aggregate == "max":
        result = np.full(num_clients, -np.inf)
        np.maximum.at(result, clients, scores)
        return result
    sums = np.bincount(clients, weights=scores, minlength=num_clients)
    return sums if aggregate == "sum" else sums / counts
