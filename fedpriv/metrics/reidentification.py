"""Re-identification of patients from reconstructions.

The harm of a reconstruction in a hospital is not its pixel error but whether it points
at a patient. Here the adversary is granted the strongest linkage resource: the
hospital's own records. A reconstruction re-identifies its patient when, among all of
the hospital's records, the closest one (least MSE) is that patient's record.

References:
  Sweeney. "k-Anonymity: A Model for Protecting Privacy", IJUFKS 10(5), 2002 (linkage
  attacks; no arXiv version).
  Geiping et al. "Inverting Gradients -- How easy is it to break privacy in federated
  learning?", NeurIPS 2020, arXiv:2003.14053 (the reconstructions being linked).
"""

from __future__ import annotations

import numpy as np

from fedpriv.metrics.matching import pairwise_mse


def nearest_record(reconstructed, hospital_records) -> np.ndarray:
    """Index of each reconstruction's nearest hospital record by MSE (first one on ties).

    Args:
      reconstructed: ``[N, ...]`` reconstructions.
      hospital_records: ``[M, ...]`` records with examples of the same shape.

    Returns:
      ``[N]`` int64 indices into ``hospital_records``.
    """
    return np.asarray(np.argmin(np.asarray(pairwise_mse(reconstructed, hospital_records)), axis=1), dtype=np.int64)


def reidentification_rate(reconstructed, true_record_ids, hospital_records, hospital_record_ids) -> float:
    """Fraction of reconstructions whose nearest hospital record is their own record.

    Reconstructions whose true id is negative (the ``-1`` of padding in
    ``ClientData.record_ids``) are not records and are left out of the rate. A true record
    that is absent from ``hospital_records`` cannot be re-identified and counts as a miss.
    Ties in distance go to the first record in ``hospital_records`` order.

    Args:
      reconstructed: ``[N, ...]`` reconstructions.
      true_record_ids: ``[N]`` the id of the record each reconstruction came from.
      hospital_records: ``[M, ...]`` the hospital's records, examples shaped like
        ``reconstructed``'s.
      hospital_record_ids: ``[M]`` the ids of those records.

    Returns:
      A Python float in ``[0, 1]``.

    Raises:
      ValueError: if shapes disagree or no reconstruction has a non-negative true id.

    Example:
      >>> import numpy as np
      >>> records = np.eye(3)
      >>> reidentification_rate(records[[2, 0]] * 0.9, [12, 10], records, [10, 11, 12])
      1.0
    """
    true_record_ids = np.asarray(true_record_ids).reshape(-1)
    hospital_record_ids = np.asarray(hospital_record_ids).reshape(-1)
    reconstructed_shape = np.shape(reconstructed)
    records_shape = np.shape(hospital_records)
    if len(reconstructed_shape) < 1 or true_record_ids.shape[0] != reconstructed_shape[0]:
        raise ValueError(f"reidentification_rate: true_record_ids has {true_record_ids.shape[0]} entries "
                         f"for reconstructed of shape {reconstructed_shape}")
    if len(records_shape) < 1 or hospital_record_ids.shape[0] != records_shape[0]:
        raise ValueError(f"reidentification_rate: hospital_record_ids has {hospital_record_ids.shape[0]} "
                         f"entries for hospital_records of shape {records_shape}")
    real = true_record_ids >= 0
    if not real.any():
        raise ValueError("reidentification_rate: no reconstruction has a true record id >= 0 "
                         "(all are padding)")
    nearest = nearest_record(np.asarray(reconstructed)[real], hospital_records)
    return float(np.mean(hospital_record_ids[nearest] == true_record_ids[real]))
