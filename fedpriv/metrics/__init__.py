"""Scores against the ground truth: the only layer that sees it (DESIGN §1).

Reconstruction quality (MSE, PSNR, SSIM) of every true record after assignment, label and label-count
recovery, ICD code sets (precision/recall/F1, hierarchy, subtype), clinical-note terms and
word order, patient re-identification, membership ROC and model utility.
"""

from fedpriv.metrics.codes import (code_set_scores, count_accuracy, hierarchical_match, implied_subtypes,
                                   subtype_accuracy, token_counts)
from fedpriv.metrics.image import gaussian_window, mse, psnr, ssim
from fedpriv.metrics.labels import label_accuracy, label_count_accuracy, label_counts, label_set_accuracy
from fedpriv.metrics.matching import RecordAssignment, assign_records, best_match, pairwise_mse
from fedpriv.metrics.record_scores import RECOGNISABLE_SSIM, ImageRecordScores, score_image_records
from fedpriv.metrics.reidentification import nearest_record, reidentification_rate
from fedpriv.metrics.tabular import (TABLEAK_TOLERANCE, TabularRecordScores, feature_hits, numeric_tolerance,
                                     score_table_records, tabular_accuracy)
from fedpriv.metrics.roc import auc, auc_confidence_interval, plot_roc, roc_curve, tpr_at_fpr
from fedpriv.metrics.tokens import order_accuracy, random_order_accuracy, rouge_l, rouge_n, set_scores, token_scores
from fedpriv.metrics.utility import accuracy

__all__ = [
    "ImageRecordScores", "RECOGNISABLE_SSIM", "RecordAssignment", "accuracy", "assign_records", "auc",
    "auc_confidence_interval", "best_match", "code_set_scores", "count_accuracy", "gaussian_window",
    "hierarchical_match", "implied_subtypes", "label_accuracy", "label_count_accuracy", "label_counts",
    "label_set_accuracy", "mse", "nearest_record", "order_accuracy", "pairwise_mse", "plot_roc", "psnr",
    "random_order_accuracy", "reidentification_rate", "roc_curve", "rouge_l", "rouge_n", "score_image_records",
    "set_scores", "ssim", "subtype_accuracy", "token_counts", "token_scores", "tpr_at_fpr",
]
__all__ += ["TABLEAK_TOLERANCE", "TabularRecordScores", "feature_hits", "numeric_tolerance",
            "score_table_records", "tabular_accuracy"]
