"""Small analysis helpers shared by the data-layer tests."""

from __future__ import annotations

import numpy as np


def nearest_centroid_accuracy(train, test, bins: int = 20) -> float:
    """Test accuracy of a nearest-centroid classifier on intensity histograms.

    Histograms ignore where a lesion is, so a high accuracy means the lesion types change
    the image content itself, the property a learnable label needs.
    """

    def features(images):
        flat = images.reshape(images.shape[0], -1)
        return np.stack([np.histogram(row, bins=bins, range=(0.0, 1.0))[0] for row in flat])

    train_x, test_x = features(train.images).astype(float), features(test.images).astype(float)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    centroids = np.stack([train_x[train.labels == k].mean(0) for k in range(train.num_classes)])
    predicted = ((test_x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predicted == test.labels).mean())
