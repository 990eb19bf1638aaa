"""The image cohort: one private data set of labelled single-channel images.

Every image source in this folder (procedural phantoms, the real CT slice, a DICOM
folder, a MedMNIST archive) ends as an ``ImageCohort``, so partitioning and round
building never care where the pixels came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedpriv.data._validation import check_generator, check_open_unit_interval


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageCohort:
    """Labelled grayscale images of one cohort.

    Attributes:
      images: ``[N, H, W, 1]`` float32 in ``[0, 1]``.
      labels: ``[N]`` int32 in ``[0, len(class_names))``.
      class_names: human-readable name of each class, index = label.
      name: human-readable name for reports.

    Raises:
      ValueError: naming the field, when a shape, dtype, range or label is invalid.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy.ndarray, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[-1] != 1 or images.shape[0] < 1:
            raise ValueError(
                f"images must have shape [N >= 1, H, W, 1], got shape {images.shape}"
            )
        if images.dtype != np.float32:
            raise ValueError(f"images must have dtype float32, got {images.dtype}")
        # NaN fails both comparisons below, so it is caught by the range check as well.
        if not (np.all(images >= 0.0) and np.all(images <= 1.0)):
            raise ValueError(
                "images must lie in [0, 1] (no NaN), got values in "
                f"[{images.min()}, {images.max()}]"
            )
        if not isinstance(labels, np.ndarray):
            raise ValueError(f"labels must be a numpy.ndarray, got {type(labels).__name__}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape [N] = ({images.shape[0]},) to match images, "
                f"got {labels.shape}"
            )
        if labels.dtype != np.int32:
            raise ValueError(f"labels must have dtype int32, got {labels.dtype}")
        names = self.class_names
        if (
            not isinstance(names, tuple)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ValueError(
                f"class_names must be a non-empty tuple of non-empty strings, got {names!r}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique, got {names!r}")
        if labels.min() < 0 or labels.max() >= len(names):
            raise ValueError(
                f"labels must lie in [0, {len(names) - 1}] (one per class name), got values "
                f"in [{labels.min()}, {labels.max()}]"
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")

    @property
    def num_records(self) -> int:
        """Number of images ``N``."""
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes, including any absent from this cohort."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one example, ``(H, W, 1)``, as models expect it."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: np.ndarray, name: str | None = None) -> ImageCohort:
        """The cohort restricted to ``indices`` (class names kept, so labels stay valid)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageCohort(
            images=self.images[indices],
            labels=self.labels[indices],
            class_names=self.class_names,
            name=self.name if name is None else name,
        )


def split_train_test(
    cohort: ImageCohort, test_fraction: float, generator: np.random.Generator
) -> tuple[ImageCohort, ImageCohort]:
    """Splits a cohort into train and test, stratified by label.

    Each class contributes ``round(test_fraction * class_count)`` records to the test set,
    so class proportions match in both halves; a class with a single record stays in train.
    Records keep their original order inside each half.

    Args:
      cohort: the cohort to split.
      test_fraction: fraction of each class that goes to the test set, in (0, 1).
      generator: host-side generator (``fedpriv.keys.numpy_generator`` of the ``data`` stream).

    Returns:
      ``(train, test)`` cohorts named ``"<name>/train"`` and ``"<name>/test"``.

    Raises:
      ValueError: if ``test_fraction`` is outside (0, 1) or leaves either half empty.
    """
    test_fraction = check_open_unit_interval("test_fraction", test_fraction)
    generator = check_generator("generator", generator)
    is_test = np.zeros(cohort.num_records, dtype=bool)
    for label in range(cohort.num_classes):
        members = np.flatnonzero(cohort.labels == label)
        num_test = int(round(test_fraction * members.size))
        # Keep at least one record of each present class in train: a class seen only at
        # test time would make the split useless for that class.
        num_test = min(num_test, members.size - 1) if members.size else 0
        is_test[generator.permutation(members)[:num_test]] = True
    if not is_test.any() or is_test.all():
        raise ValueError(
            f"test_fraction={test_fraction} leaves the train or test half of cohort "
            f"{cohort.name!r} ({cohort.num_records} records) empty; use more records or a "
            "fraction nearer 0.5"
        )
    train = cohort.subset(np.flatnonzero(~is_test), name=f"{cohort.name}/train")
    test = cohort.subset(np.flatnonzero(is_test), name=f"{cohort.name}/test")
    return train, test
