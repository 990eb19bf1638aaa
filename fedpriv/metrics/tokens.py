"""Scores for recovered notes: which clinical terms leaked, and in what order.

Padding and the special tokens (``[PAD]``, ``[UNK]``, ``[CLS]``) are dropped before any
score: they carry no patient information. A record is the last axis ``[..., L]`` of token
ids; leading axes (victims, local steps, batch of ``Reconstruction.inputs``) index
separate records whose scores are averaged.

* Term recovery: precision, recall and F1 of the recovered token *set* against the true
  set (a bag attack recovers sets, not counts).
* Order accuracy: the fraction of the true note's positions that hold the right token,
  with its closed-form random-order baseline ``sum_t c_t^2 / n^2`` (the expected accuracy
  of a uniformly random permutation of the true tokens, ``c_t`` the count of token ``t``
  among the ``n`` real tokens).
* ROUGE-1/2 F1 (multiset n-gram overlap) and ROUGE-L F1 (longest common subsequence), the
  scores LAMP and TAG report.

References:
  Lin. "ROUGE: A Package for Automatic Evaluation of Summaries", ACL workshop 2004.
  Balunović et al. "LAMP: Extracting Text from Gradients with Language Model Priors",
  NeurIPS 2022, arXiv:2202.08827.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from fedpriv.public.clinical_words import SPECIAL_IDS


def _records(ids, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim == 0 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{name} must be integer token ids of shape [..., L], got shape {ids.shape} "
                         f"and dtype {ids.dtype}")
    return ids.reshape(-1, ids.shape[-1])


def _pair(recovered, true) -> tuple[np.ndarray, np.ndarray]:
    recovered, true = _records(recovered, "recovered"), _records(true, "true")
    if recovered.shape != true.shape:
        raise ValueError(f"recovered and true must have the same shape [..., L], got {np.shape(recovered)} "
                         f"and {np.shape(true)}")
    return recovered, true


def content(ids: Iterable[int], ignore_ids: Iterable[int] = SPECIAL_IDS) -> list[int]:
    """The tokens of one record in order, padding and special tokens dropped."""
    ignore = set(int(i) for i in ignore_ids)
    return [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in ignore]


def set_scores(recovered: Iterable[int], true: Iterable[int]) -> dict[str, float]:
    """Precision, recall and F1 of a recovered token set against the true tokens.

    Both arguments are any collections of ids (e.g. a bag from ``token_bag`` and all the
    victim's tokens, ``[S, B, L]``); duplicates, padding and special tokens are ignored.
    Two empty sets score 1; an empty set against a non-empty one scores 0.

    Example:
      >>> set_scores([5, 6, 7, 0], [5, 6, 8, 8])
      {'precision': 0.6666666666666666, 'recall': 0.6666666666666666, 'f1': 0.6666666666666666}
    """
    recovered, true = set(content(recovered)), set(content(true))
    if not recovered and not true:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    hits = len(recovered & true)
    precision = hits / len(recovered) if recovered else 0.0
    recall = hits / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def term_recovery(recovered, true) -> dict[str, float]:
    """Mean per-record set precision/recall/F1 of ``[..., L]`` notes (``set_scores`` per record)."""
    recovered, true = _pair(recovered, true)
    scores = [set_scores(r, t) for r, t in zip(recovered, true)]
    return {name: float(np.mean([s[name] for s in scores])) for name in ("precision", "recall", "f1")}


def order_accuracy(recovered, true) -> float:
    """Fraction of the true notes' real positions holding the right token.

    Positions where the true note has padding or a special token are not scored.

    Example:
      >>> order_accuracy([[4, 5, 6, 0]], [[4, 6, 6, 0]])
      0.6666666666666666
    """
    recovered, true = _pair(recovered, true)
    scored = ~np.isin(true, SPECIAL_IDS)
    per_record = [np.mean(r[s] == t[s]) if s.any() else 1.0 for r, t, s in zip(recovered, true, scored)]
    return float(np.mean(per_record))


def random_order_accuracy(true) -> float:
    """Expected ``order_accuracy`` of a uniformly random permutation of each true note's
    real positions: ``sum_t c_t^2 / n^2`` per note, averaged.

    Example:
      >>> random_order_accuracy([[4, 5, 5, 0]])  # (1 + 4) / 9
      0.5555555555555556
    """
    true = _records(true, "true")
    scores = []
    for record in true:
        tokens = content(record)
        counts = np.array(list(Counter(tokens).values()), np.float64)
        scores.append(float(np.sum(counts**2) / len(tokens) ** 2) if tokens else 1.0)
    return float(np.mean(scores))


def _f1(hits: int, recovered_count: int, true_count: int) -> float:
    if recovered_count == 0 and true_count == 0:
        return 1.0
    if hits == 0:
        return 0.0
    precision, recall = hits / recovered_count, hits / true_count
    return 2 * precision * recall / (precision + recall)


def rouge_n(recovered, true, n: int) -> float:
    """Mean ROUGE-n F1: multiset overlap of the n-grams of the real tokens of each note.

    Example:
      >>> rouge_n([[4, 5, 6]], [[4, 5, 7]], 2)  # bigrams {45, 56} vs {45, 57}
      0.5
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    recovered, true = _pair(recovered, true)
    scores = []
    for r, t in zip(recovered, true):
        r_grams = Counter(zip(*(content(r)[i:] for i in range(n))))
        t_grams = Counter(zip(*(content(t)[i:] for i in range(n))))
        hits = sum((r_grams & t_grams).values())
        scores.append(_f1(hits, sum(r_grams.values()), sum(t_grams.values())))
    return float(np.mean(scores))


def longest_common_subsequence(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) len(b)))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(recovered, true) -> float:
    """Mean ROUGE-L F1: LCS-based precision and recall of each note's real tokens.

    Example:
      >>> rouge_l([[4, 6, 5]], [[4, 5, 6]])  # LCS 2 of 3 and 3
      0.6666666666666666
    """
    recovered, true = _pair(recovered, true)
    scores = []
    for r, t in zip(recovered, true):
        r, t = content(r), content(t)
        scores.append(_f1(longest_common_subsequence(r, t), len(r), len(t)))
    return float(np.mean(scores))


def token_scores(recovered, true) -> dict[str, float]:
    """Every token score of ``[..., L]`` recovered notes against the true ones, flat.

    Returns:
      ``term_precision``, ``term_recall``, ``term_f1``, ``order_accuracy``,
      ``random_order_accuracy`` (its baseline), ``rouge1_f1``, ``rouge2_f1``, ``rougeL_f1``, and
      ``exact_note``: the share of notes given back token for token, padding included.
    """
    terms = term_recovery(recovered, true)
    recovered_ids, true_ids = np.asarray(recovered), np.asarray(true)
    exact = np.all(recovered_ids.reshape(-1, true_ids.shape[-1]) == true_ids.reshape(-1, true_ids.shape[-1]), axis=-1)
    return {"term_precision": terms["precision"], "term_recall": terms["recall"], "term_f1": terms["f1"],
            "order_accuracy": order_accuracy(recovered, true),
            "random_order_accuracy": random_order_accuracy(true),
            "rouge1_f1": rouge_n(recovered, true, 1), "rouge2_f1": rouge_n(recovered, true, 2),
            "rougeL_f1": rouge_l(recovered, true), "exact_note": float(np.mean(exact))}

