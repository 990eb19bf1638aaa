"""Image reconstructions scored record by record, every true record counted.

A victim's true records and the attacker's reconstructions are paired by
``assign_records`` (Hungarian assignment on MSE, or every reconstruction against its
nearest record when there are more reconstructions than records: the surplus is never
filtered with the ground truth). A true record with no reconstruction is a failure and
is scored as the uninformative guess, the constant image at the middle of the data
range, so a partial reconstruction lowers the mean rather than vanishing from it.

Besides means the summaries give medians and the share of scored pairs that are
*recognisable*, SSIM >= 0.6: the bar fedpriv's attack issue (#10) sets for "a
radiologist would recognise the same slice". It is a convention of this project, not a
published threshold; the per-pair SSIMs are there for any other.

Scores alone overstate leakage when the records share their layout: on the 32x32 CT
phantoms the mean of 512 public phantoms (other patients, no gradient) already scores
19.6 and 18.8 dB PSNR and SSIM 0.65 and 0.71 against two patients of the default cohort
(measured), i.e. "recognisable". So every image score has a baseline beside it, the
attacker's best guess without the update (``score_guess``: the public mean image, or the
blank guess), and leakage is what the attack adds to it (``psnr_gain_db``). This is the
prior of the Bayesian view of gradient leakage (Balunovic et al., "Bayesian Framework for
Gradient Leakage", ICLR 2022, arXiv 2111.04706): the update leaks what moves the attacker
beyond its prior.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedpriv.metrics.image import mse, psnr, ssim
from fedpriv.metrics.matching import assign_records, pairwise_mse

RECOGNISABLE_SSIM = 0.6
# Exact copies have infinite PSNR; means cap them here so one copy does not make the mean infinite.
PSNR_CAP_DB = 100.0


@dataclasses.dataclass(frozen=True)
class ImageRecordScores:
    """Per-pair scores of one victim: the assigned pairs first, then the missing records.

    Attributes:
      psnr_db, ssim, mse: ``[P + missing]`` scores (PSNR capped at ``PSNR_CAP_DB``).
      reconstructed, truth: ``[P + missing, ...]`` the images scored (the blank guess
        stands in for a missing reconstruction).
      reconstruction_index, truth_index: ``[P]`` the assigned pairs.
      missing: how many true records had no reconstruction.
      surplus: reconstructions beyond the number of true records (all scored).
      matching: ``RecordAssignment.matching``.
    """

    psnr_db: np.ndarray
    ssim: np.ndarray
    mse: np.ndarray
    reconstructed: np.ndarray
    truth: np.ndarray
    reconstruction_index: np.ndarray
    truth_index: np.ndarray
    missing: int
    surplus: int
    matching: str


def score_image_records(reconstructed, truth, *, data_range: float = 1.0) -> ImageRecordScores:
    """Scores ``[N, H, W, C]`` reconstructions against ``[M, H, W, C]`` true records.

    Non-finite reconstructions (an attack's "no candidate") are dropped first.
    """
    reconstructed, truth = np.asarray(reconstructed, np.float32), np.asarray(truth, np.float32)
    if reconstructed.shape[1:] != truth.shape[1:]:
        raise ValueError(f"score_image_records: reconstructions {reconstructed.shape} and true records "
                         f"{truth.shape} must share the image shape")
    finite = np.isfinite(reconstructed).reshape(reconstructed.shape[0], int(np.prod(reconstructed.shape[1:]))).all(axis=1)
    reconstructed = reconstructed[finite]
    if reconstructed.shape[0] and truth.shape[0]:
        assignment = assign_records(pairwise_mse(reconstructed, truth))
    else:
        assignment = assign_records(np.zeros((reconstructed.shape[0], truth.shape[0])))
    blank = blank_guess((len(assignment.missing), *truth.shape[1:]), data_range)
    scored_reconstructions = np.concatenate([reconstructed[assignment.reconstruction_index], blank])
    scored_truth = np.concatenate([truth[assignment.truth_index], truth[assignment.missing]])
    if scored_truth.shape[0] == 0:
        empty = np.zeros(0, np.float32)
        return ImageRecordScores(empty, empty, empty, scored_reconstructions, scored_truth,
                                 assignment.reconstruction_index, assignment.truth_index, 0, 0, assignment.matching)
    return ImageRecordScores(
        psnr_db=np.minimum(np.asarray(psnr(scored_reconstructions, scored_truth, data_range)), PSNR_CAP_DB),
        ssim=np.asarray(ssim(scored_reconstructions, scored_truth, data_range)),
        mse=np.asarray(mse(scored_reconstructions, scored_truth)),
        reconstructed=scored_reconstructions, truth=scored_truth,
        reconstruction_index=assignment.reconstruction_index, truth_index=assignment.truth_index,
        missing=len(assignment.missing), surplus=max(0, reconstructed.shape[0] - truth.shape[0]),
        matching=assignment.matching)


def blank_guess(shape, data_range: float = 1.0) -> np.ndarray:
    """The uninformative guess: the constant image at the middle of the data range."""
    return np.full(shape, data_range / 2, np.float32)


def score_guess(guess, truth, *, data_range: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (capped) and SSIM of ONE ``[H, W, C]`` guess against each of ``[M, H, W, C]`` records.

    The baseline an attack is compared with: what the attacker would say of every record
    without seeing an update.
    """
    truth = np.asarray(truth, np.float32)
    guess = np.asarray(guess, np.float32)
    if guess.shape != truth.shape[1:]:
        raise ValueError(f"score_guess: the guess {guess.shape} must have the records' shape {truth.shape[1:]}")
    if truth.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    guesses = np.broadcast_to(guess, truth.shape)
    return (np.minimum(np.asarray(psnr(guesses, truth, data_range)), PSNR_CAP_DB),
            np.asarray(ssim(guesses, truth, data_range)))


def summarise(psnr_db: np.ndarray, ssim_values: np.ndarray) -> dict[str, float]:
    """Mean, median and share recognisable (SSIM >= ``RECOGNISABLE_SSIM``) of scored pairs."""
    if len(psnr_db) == 0:
        nan = float("nan")
        return {"psnr_db": nan, "psnr_db_median": nan, "ssim": nan, "ssim_median": nan, "recognisable_share": nan}
    return {"psnr_db": float(np.mean(psnr_db)), "psnr_db_median": float(np.median(psnr_db)),
            "ssim": float(np.mean(ssim_values)), "ssim_median": float(np.median(ssim_values)),
            "recognisable_share": float(np.mean(ssim_values >= RECOGNISABLE_SSIM))}
