"""Synthetic focal lesions drawn into CT images in Hounsfield units.

The lesion type is the class label of the image cohorts built from phantoms and from the
real CT slice; both draw through this one module, so a "hypodense cyst" means the same
pixels whichever background it sits on. Lesions are drawn in HU before windowing, so
their contrast against the host tissue is what a CT scanner would show (a cyst is dark
against liver at soft-tissue window, a calcification saturates to white).

All drawing is vectorised over the batch with coordinate grids; there is no per-pixel
Python loop.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from fedpriv.data._validation import check_int
from fedpriv.data.imaging import smooth_noise

#: Label -> lesion type. Label 0 is always "no lesion"; a cohort with ``num_classes = k``
#: uses the first ``k`` names.
LESION_CLASS_NAMES = (
    "no lesion",
    "hypodense cyst",
    "hyperdense mass",
    "calcification",
    "fat-containing lesion",
)
MIN_LESION_CLASSES = 2

NO_LESION, CYST, MASS, CALCIFICATION, FAT = range(len(LESION_CLASS_NAMES))

#: Lesion radius as a fraction of the image side. At 32x32 this is 2-3.2 pixels, large
#: enough to stay visible after the anti-aliased resize; it scales with the image so the
#: task difficulty does not change with resolution.
RADIUS_FRACTION = (0.065, 0.10)


def lesion_class_names(num_classes: int) -> tuple[str, ...]:
    """The class names of a lesion cohort with ``num_classes`` classes.

    Raises:
      ValueError: if ``num_classes`` is not an integer in ``[2, 5]``.
    """
    num_classes = check_int(
        "num_classes", num_classes, minimum=MIN_LESION_CLASSES, maximum=len(LESION_CLASS_NAMES)
    )
    return LESION_CLASS_NAMES[:num_classes]


def balanced_labels(num_records: int, num_classes: int, generator: np.random.Generator) -> np.ndarray:
    """Labels with every class as equally frequent as possible, in random order.

    Exact balance (rather than i.i.d. draws) guarantees every class is present as soon as
    ``num_records >= num_classes``, which small test cohorts and skewed partitions need.
    """
    return generator.permutation(np.arange(num_records) % num_classes).astype(np.int32)


def lesion_radii(image_size: int, count: int, generator: np.random.Generator) -> np.ndarray:
    """Per-record lesion radius in pixels, ``[count]`` float32."""
    low, high = RADIUS_FRACTION
    return (generator.uniform(low, high, size=count) * image_size).astype(np.float32)


def site_margin_pixels(image_size: int) -> int:
    """Distance in pixels a lesion centre keeps from its host organ's boundary.

    One maximal radius: round lesions then lie inside the organ; the lobes of a mass may
    reach its capsule, as exophytic tumours do.
    """
    return int(np.ceil(RADIUS_FRACTION[1] * image_size))


def sample_lesion_centers(
    site_mask: np.ndarray, margin_pixels: int, generator: np.random.Generator
) -> np.ndarray:
    """Draws one lesion centre per image, uniformly among pixels of the host organ.

    Pixels closer than ``margin_pixels`` to the organ boundary are avoided so the lesion
    lies inside the organ. If an image's organ is too small for the margin, any organ
    pixel is used; if it has no organ pixel at all, the image centre.

    Args:
      site_mask: ``[N, H, W]`` bool, True where a lesion may be centred.
      margin_pixels: distance to keep from the organ boundary (a square neighbourhood,
        which is conservative for round lesions).
      generator: host-side generator.

    Returns:
      ``[N, 2]`` float32 ``(row, col)`` centres in pixel-index coordinates, with
      sub-pixel jitter so positions are continuous.
    """
    site_mask = np.asarray(site_mask, dtype=bool)
    count, height, width = site_mask.shape
    candidates = site_mask
    if margin_pixels > 0:
        window = 2 * int(margin_pixels) + 1
        eroded = ndi.minimum_filter(site_mask, size=(1, window, window), mode="constant", cval=0)
        has_room = eroded.any(axis=(1, 2))
        candidates = np.where(has_room[:, None, None], eroded, site_mask)
    # The argmax of i.i.d. uniform scores over the allowed pixels is a uniform draw among
    # them, for every image at once.
    scores = generator.random(site_mask.shape, dtype=np.float32)
    scores = np.where(candidates, scores, -1.0)
    flat = scores.reshape(count, -1).argmax(axis=1)
    rows, cols = np.divmod(flat, width)
    centers = np.stack([rows, cols], axis=1).astype(np.float32)
    centers += generator.uniform(-0.5, 0.5, size=(count, 2)).astype(np.float32)
    empty = ~candidates.any(axis=(1, 2))
    centers[empty] = ((height - 1) / 2.0, (width - 1) / 2.0)
    return centers


def draw_lesions(
    hu: np.ndarray,
    labels: np.ndarray,
    centers: np.ndarray,
    radii: np.ndarray,
    generator: np.random.Generator,
) -> np.ndarray:
    """Draws the lesion of each image's label into a batch of HU images.

    Lesion appearance follows the radiological description of each type:

    * hypodense cyst: round, sharply marginated, homogeneous fluid (~0-15 HU);
    * hyperdense mass: lobulated irregular margin, heterogeneous arterial enhancement (~160 HU);
    * calcification: 1-3 punctate foci of bone-like density (700-1100 HU);
    * fat-containing lesion: oval, smooth, macroscopic fat (~ -90 HU).

    Args:
      hu: ``[N, H, W]`` images in Hounsfield units.
      labels: ``[N]`` lesion type per image (index into ``LESION_CLASS_NAMES``).
      centers: ``[N, 2]`` ``(row, col)`` lesion centres in pixel-index coordinates.
      radii: ``[N]`` lesion radius in pixels.
      generator: host-side generator.

    Returns:
      A new float32 ``[N, H, W]`` array; images with label 0 are unchanged.
    """
    out = np.array(hu, dtype=np.float32, copy=True)
    labels = np.asarray(labels)
    _, height, width = out.shape
    drawers = {
        CYST: _draw_cyst,
        MASS: _draw_mass,
        CALCIFICATION: _draw_calcification,
        FAT: _draw_fat,
    }
    rows = np.arange(height, dtype=np.float32)[None, :, None]
    cols = np.arange(width, dtype=np.float32)[None, None, :]
    # Every type's parameters are drawn in a fixed order, so the stream consumption (and
    # thus the whole cohort) depends only on the generator and the labels.
    for label, drawer in drawers.items():
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        dy = rows - centers[members, 0, None, None]
        dx = cols - centers[members, 1, None, None]
        out[members] = drawer(out[members], dy, dx, radii[members, None, None], generator)
    return out


def _blend(hu: np.ndarray, alpha: np.ndarray, value: np.ndarray) -> np.ndarray:
    # Partial-volume mixing: an edge pixel is part lesion, part host tissue, which is how
    # a real scanner (and the anti-aliasing here) renders a boundary.
    return hu + alpha * (value - hu)


def _draw_cyst(hu, dy, dx, radius, generator):
    count = hu.shape[0]
    value = generator.normal(8.0, 4.0, size=(count, 1, 1)).astype(np.float32)
    distance = np.sqrt(dy * dy + dx * dx)
    # One-pixel ramp: the sharpest edge that is still anti-aliased.
    alpha = np.clip(radius - distance + 0.5, 0.0, 1.0)
    return _blend(hu, alpha, value)


def _draw_mass(hu, dy, dx, radius, generator):
    count = hu.shape[0]
    value = generator.normal(160.0, 12.0, size=(count, 1, 1)).astype(np.float32)
    harmonics = np.array([2.0, 3.0, 5.0], dtype=np.float32)[:, None, None, None]
    amplitudes = generator.uniform(0.06, 0.14, size=(3, count, 1, 1)).astype(np.float32)
    phases = generator.uniform(0.0, 2.0 * np.pi, size=(3, count, 1, 1)).astype(np.float32)
    texture = smooth_noise(hu.shape, max(0.7, float(np.mean(radius)) / 3.0), generator)
    angle = np.arctan2(dy, dx)
    # A radius that oscillates with angle gives the lobulated outline of a solid tumour.
    lobes = (amplitudes * np.cos(harmonics * angle[None] + phases)).sum(axis=0)
    boundary = 1.1 * radius * (1.0 + lobes)
    distance = np.sqrt(dy * dy + dx * dx)
    alpha = np.clip((boundary - distance) / 1.5 + 0.5, 0.0, 1.0)
    return _blend(hu, alpha, value + 18.0 * texture)


def _draw_calcification(hu, dy, dx, radius, generator):
    count, height, _ = hu.shape
    max_spots = 3
    num_spots = generator.integers(1, max_spots + 1, size=count)
    offset_radius = generator.uniform(0.0, 0.7, size=(max_spots, count)) * radius[:, 0, 0]
    offset_angle = generator.uniform(0.0, 2.0 * np.pi, size=(max_spots, count))
    peaks = generator.uniform(700.0, 1100.0, size=(max_spots, count)).astype(np.float32)
    # Foci stay about a pixel wide at any resolution >= 32, the smallest size a scanner
    # resolves; below that they would vanish in the anti-aliasing.
    spot_sigma = np.float32(max(0.6, 0.015 * height))
    for spot in range(max_spots):
        present = (spot < num_spots).astype(np.float32)[:, None, None]
        sy = dy - (offset_radius[spot] * np.sin(offset_angle[spot]))[:, None, None]
        sx = dx - (offset_radius[spot] * np.cos(offset_angle[spot]))[:, None, None]
        alpha = present * np.exp(-(sy * sy + sx * sx) / (2.0 * spot_sigma**2))
        hu = _blend(hu, alpha.astype(np.float32), peaks[spot][:, None, None])
    return hu


def _draw_fat(hu, dy, dx, radius, generator):
    count = hu.shape[0]
    value = generator.normal(-90.0, 8.0, size=(count, 1, 1)).astype(np.float32)
    aspect = generator.uniform(0.7, 1.0, size=(count, 1, 1)).astype(np.float32)
    angle = generator.uniform(0.0, np.pi, size=(count, 1, 1)).astype(np.float32)
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    # Distance in units of the radius along the long axis; for an oval this is close
    # enough to a signed distance for a one-pixel anti-aliased edge.
    scaled = np.sqrt(along * along + (across / aspect) ** 2)
    alpha = np.clip(radius - scaled + 0.5, 0.0, 1.0)
    return _blend(hu, alpha, value)
