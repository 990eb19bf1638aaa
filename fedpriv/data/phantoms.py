"""Procedural CT-like phantoms: axial slices of the lower thorax / upper abdomen.

A private cohort that needs no download and no patient data, yet has the structure that
makes gradient leakage in medical imaging interesting: every image shares an anatomical
layout (body outline, lungs, liver, spleen, kidneys, aorta, vertebra), patients differ in size,
pose, organ geometry, enhancement and noise, and the label — the lesion type in the
liver — is a small local feature, as in real diagnostic tasks.

Images are built in Hounsfield units, then shown through the soft-tissue window
(centre 40, width 400) like the real CT slice of ``fedpriv.data.ct``. Everything is
vectorised over a chunk of patients with coordinate grids.

Layout convention (radiological): the patient's right is on the image left, anterior
at the top.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from fedpriv.data._validation import check_generator, check_int
from fedpriv.data.cohort import ImageCohort
from fedpriv.data.imaging import SOFT_TISSUE_WINDOW, hounsfield_to_unit, smooth_noise
from fedpriv.data.lesions import (
    balanced_labels,
    draw_lesions,
    lesion_class_names,
    lesion_radii,
    sample_lesion_centers,
    site_margin_pixels,
)

logger = logging.getLogger(__name__)

MIN_IMAGE_SIZE = 16
AIR_HU = -1000.0

# Patients are rendered in chunks so memory stays bounded (a few MB per array) for any
# cohort size; the chunk size is fixed so the random stream, and thus the cohort, does not
# depend on it.
_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class _Organ:
    """An elliptical structure in the body frame, in units of the body's semi-axes.

    ``center`` and ``axes`` are fractions of the body semi-axes (x: half-width,
    y: half-depth, y pointing posterior); ``*_jitter`` are the patient-to-patient spreads
    (absolute for centre and angle, relative for axes); ``hu`` is (mean, std) over patients.
    """

    center: tuple[float, float]
    center_jitter: float
    axes: tuple[float, float]
    axes_jitter: float
    angle: float
    angle_jitter: float
    hu: tuple[float, float]


# Painted liver, spleen, lungs, kidneys, aorta, spine: later structures cover earlier ones,
# as the lung base covers the posterior liver dome on a real slice.
# HU values are those of a portal-venous phase scan: enhanced liver and spleen stand out
# from unenhanced muscle and bowel, so a lesion's contrast depends on its type only.
_LIVER = _Organ((-0.32, -0.22), 0.04, (0.47, 0.52), 0.08, -0.15, 0.15, (95.0, 8.0))
_SPLEEN = _Organ((0.45, -0.12), 0.04, (0.17, 0.28), 0.10, 0.50, 0.15, (105.0, 8.0))
_LUNG = _Organ((0.58, 0.20), 0.03, (0.20, 0.34), 0.10, 0.25, 0.10, (-850.0, 30.0))
_KIDNEY = _Organ((0.30, 0.50), 0.03, (0.11, 0.16), 0.10, 0.35, 0.10, (130.0, 15.0))
_AORTA = _Organ((0.07, 0.30), 0.02, (0.065, 0.065), 0.12, 0.0, 0.0, (200.0, 40.0))
_VERTEBRA_CORTEX = _Organ((0.0, 0.50), 0.02, (0.14, 0.13), 0.06, 0.0, 0.05, (700.0, 60.0))
_VERTEBRA_MARROW = _Organ((0.0, 0.50), 0.0, (0.11, 0.10), 0.0, 0.0, 0.0, (300.0, 40.0))
_SPINAL_CANAL = _Organ((0.0, 0.69), 0.01, (0.05, 0.05), 0.08, 0.0, 0.0, (20.0, 5.0))
_SPINOUS_PROCESS = _Organ((0.0, 0.80), 0.01, (0.035, 0.075), 0.08, 0.0, 0.05, (600.0, 60.0))


def make_phantom_cohort(
    num_records: int, image_size: int, generator: np.random.Generator, *, num_classes: int = 4
) -> ImageCohort:
    """Generates a cohort of CT-like phantom slices labelled by lesion type.

    Label 0 is "no lesion"; labels 1.. are the lesion types of
    ``fedpriv.data.lesions.LESION_CLASS_NAMES`` (hypodense cyst, hyperdense mass,
    calcification, fat-containing lesion), drawn inside the liver at a size relative to
    the image, so the task is the same at 32x32 and 256x256. Classes are balanced.

    Args:
      num_records: number of patients (images), >= 1.
      image_size: side of the square images in pixels, >= 16.
      generator: host-side generator (``fedpriv.keys.numpy_generator`` of the ``data``
        stream); the same generator state gives the same cohort, bit for bit.
      num_classes: number of classes, in [2, 5].

    Returns:
      An ``ImageCohort`` with images ``[num_records, image_size, image_size, 1]``.

    Raises:
      ValueError: naming the argument, if one is out of range.
      TypeError: if ``generator`` is not a ``numpy.random.Generator``.

    Example:
      >>> cohort = make_phantom_cohort(8, 32, np.random.default_rng(0))
      >>> cohort.images.shape, cohort.class_names[1]
      ((8, 32, 32, 1), 'hypodense cyst')
    """
    num_records = check_int("num_records", num_records, minimum=1)
    image_size = check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    class_names = lesion_class_names(num_classes)
    generator = check_generator("generator", generator)

    labels = balanced_labels(num_records, len(class_names), generator)
    images = np.empty((num_records, image_size, image_size, 1), dtype=np.float32)
    for start in range(0, num_records, _CHUNK):
        stop = min(start + _CHUNK, num_records)
        images[start:stop, ..., 0] = _render_chunk(labels[start:stop], image_size, generator)
    logger.debug("generated %d phantoms of %dx%d", num_records, image_size, image_size)
    return ImageCohort(
        images=images,
        labels=labels,
        class_names=class_names,
        name=f"phantom{image_size}",
    )


def _render_chunk(labels: np.ndarray, size: int, generator: np.random.Generator) -> np.ndarray:
    count = labels.shape[0]
    # Pixel centres in normalised image coordinates, (-1, 1) across the field of view.
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    u, v = grid[None, None, :], grid[None, :, None]
    pixel = np.float32(2.0 / size)

    def column(low, high):
        return generator.uniform(low, high, size=(count, 1, 1)).astype(np.float32)

    # Patient habitus: width, depth (AP) and a small roll on the table.
    half_width = column(0.80, 0.92)
    half_depth = half_width * column(0.62, 0.78)
    roll = column(-0.10, 0.10)
    center_x, center_y = column(-0.04, 0.04), column(-0.04, 0.04)
    x0, y0 = u - center_x, v - center_y
    body = _Body(
        x=x0 * np.cos(roll) + y0 * np.sin(roll),
        y=-x0 * np.sin(roll) + y0 * np.cos(roll),
        half_width=half_width,
        half_depth=half_depth,
        roll=roll,
        center_x=center_x,
        center_y=center_y,
        pixel=pixel,
    )

    hu = np.full((count, size, size), AIR_HU, dtype=np.float32)
    outline = _coverage(body.x, body.y, 0.0, 0.0, half_width, half_depth, 0.0, pixel)
    hu = _blend(hu, outline, generator.normal(-100.0, 10.0, size=(count, 1, 1)))  # subcutaneous fat
    fat_fraction = column(0.86, 0.93)
    muscle = _coverage(
        body.x, body.y, 0.0, 0.0, half_width * fat_fraction, half_depth * fat_fraction, 0.0, pixel
    )
    hu = _blend(hu, muscle, generator.normal(30.0, 5.0, size=(count, 1, 1)))

    liver = _paint(_LIVER, 1.0, body, hu, generator)
    _paint(_SPLEEN, 1.0, body, hu, generator)
    lungs = np.maximum(_paint(_LUNG, -1.0, body, hu, generator), _paint(_LUNG, 1.0, body, hu, generator))
    for organ, side in ((_KIDNEY, -1.0), (_KIDNEY, 1.0)):
        _paint(organ, side, body, hu, generator)
    for organ in (_AORTA, _VERTEBRA_CORTEX, _VERTEBRA_MARROW, _SPINAL_CANAL, _SPINOUS_PROCESS):
        _paint(organ, 1.0, body, hu, generator)

    # Parenchymal texture: lung is far more heterogeneous (vessels, airways) than solid
    # organs; the texture is correlated over about a pixel at 64x64, like a soft kernel.
    texture = smooth_noise(hu.shape, max(0.6, size / 64.0), generator)
    hu = hu + texture * outline * (10.0 + 30.0 * lungs)

    # The liver is the lesion's host organ; where the lung base covers it there is no
    # liver, so only uncovered liver may host a lesion.
    site = (liver > 0.99) & (lungs < 0.01)
    centers = sample_lesion_centers(site, site_margin_pixels(size), generator)
    radii = lesion_radii(size, count, generator)
    hu = draw_lesions(hu, labels, centers, radii, generator)

    window_center, window_width = SOFT_TISSUE_WINDOW
    unit = hounsfield_to_unit(hu, window_center, window_width)
    # Quantum noise differs by scanner dose and patient size; mildly correlated like CT.
    noise_std = column(0.008, 0.03)
    unit = unit + noise_std * smooth_noise(hu.shape, 0.5, generator)
    return np.clip(unit, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _Body:
    """Each patient's body frame: pixel coordinates in it, and its pose in the image.

    ``x``, ``y`` are ``[n, S, S]``; the rest ``[n, 1, 1]``.
    """

    x: np.ndarray
    y: np.ndarray
    half_width: np.ndarray
    half_depth: np.ndarray
    roll: np.ndarray
    center_x: np.ndarray
    center_y: np.ndarray
    pixel: np.float32


def _paint(organ: _Organ, side: float, body: _Body, hu: np.ndarray, generator) -> np.ndarray:
    """Samples one organ per patient, draws it into ``hu`` in place, returns its coverage.

    Only the bounding box of the organ over the chunk is evaluated: most organs cover a
    few percent of the image, and the ellipse maths dominates the generator's run time.
    """
    count = hu.shape[0]

    def jitter(spread):
        return generator.uniform(-spread, spread, size=(count, 1, 1)).astype(np.float32)

    cx = (side * organ.center[0] + jitter(organ.center_jitter)) * body.half_width
    cy = (organ.center[1] + jitter(organ.center_jitter)) * body.half_depth
    ax = organ.axes[0] * (1.0 + jitter(organ.axes_jitter)) * body.half_width
    ay = organ.axes[1] * (1.0 + jitter(organ.axes_jitter)) * body.half_depth
    angle = side * organ.angle + jitter(organ.angle_jitter)
    value = generator.normal(organ.hu[0], organ.hu[1], size=(count, 1, 1)).astype(np.float32)

    rows, cols = _bounding_box(body, cx, cy, np.maximum(ax, ay), hu.shape[-1])
    coverage = np.zeros_like(hu)
    box = coverage[:, rows, cols] = _coverage(
        body.x[:, rows, cols], body.y[:, rows, cols], cx, cy, ax, ay, angle, body.pixel
    )
    hu[:, rows, cols] = _blend(hu[:, rows, cols], box, value)
    return coverage


def _bounding_box(body: _Body, cx, cy, radius, size: int) -> tuple[slice, slice]:
    """Pixel rows and columns that can touch a disk of ``radius`` around ``(cx, cy)``.

    The centre is mapped from the body frame to the image; the union over the chunk's
    patients is returned, widened by two pixels for the anti-aliasing ramp.
    """
    cos, sin = np.cos(body.roll), np.sin(body.roll)
    image_x = body.center_x + cx * cos - cy * sin
    image_y = body.center_y + cx * sin + cy * cos
    reach = radius + 2.0 * body.pixel

    def pixel_range(center):
        # Pixel i has its centre at (i + 0.5) * pixel - 1.
        first = np.floor((np.min(center - reach) + 1.0) / body.pixel - 0.5)
        last = np.ceil((np.max(center + reach) + 1.0) / body.pixel - 0.5)
        return slice(int(np.clip(first, 0, size)), int(np.clip(last + 1, 0, size)))

    return pixel_range(image_y), pixel_range(image_x)


def _coverage(x, y, cx, cy, ax, ay, angle, pixel) -> np.ndarray:
    """Fraction of each pixel inside an ellipse (anti-aliased over one pixel).

    Uses the first-order signed distance ``f / |grad f|`` of the implicit function
    ``f = (u / ax)^2 + (v / ay)^2 - 1``: within a fraction of a pixel of the true
    distance near the boundary of the mildly eccentric ellipses used here, which is all
    the one-pixel edge ramp needs; away from the boundary only its sign matters.
    """
    inverse_ax, inverse_ay = 1.0 / ax, 1.0 / ay
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    u = (dx * cos + dy * sin) * inverse_ax
    v = (dy * cos - dx * sin) * inverse_ay
    implicit = u * u + v * v - 1.0
    half_gradient = np.sqrt((u * inverse_ax) ** 2 + (v * inverse_ay) ** 2)
    # At the exact centre the gradient vanishes and the distance is -inf: fully inside.
    with np.errstate(divide="ignore"):
        signed_distance = implicit / (2.0 * half_gradient)
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0).astype(np.float32, copy=False)


def _blend(hu: np.ndarray, coverage: np.ndarray, value) -> np.ndarray:
    # Partial-volume mixing at organ boundaries.
    return hu + coverage * (np.asarray(value, dtype=np.float32) - hu)
