"""Scores against the ground truth: the only layer that sees it (DESIGN §1).

Reconstruction quality (MSE, PSNR, SSIM) after best matching, label recovery, patient
re-identification and model utility.
"""

from fedpriv.metrics.image import gaussian_window, mse, psnr, ssim
from fedpriv.metrics.labels import label_accuracy
from fedpriv.metrics.matching import best_match, pairwise_mse
from fedpriv.metrics.reidentification import nearest_record, reidentification_rate
from fedpriv.metrics.roc import auc, plot_roc, roc_curve, tpr_at_fpr
from fedpriv.metrics.utility import accuracy

__all__ = [
    "accuracy",
    "auc",
    "best_match",
    "gaussian_window",
    "label_accuracy",
    "mse",
    "nearest_record",
    "pairwise_mse",
    "plot_roc",
    "psnr",
    "reidentification_rate",
    "roc_curve",
    "ssim",
    "tpr_at_fpr",
]
