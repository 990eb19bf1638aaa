"""Pixel operations shared by every image source: CT windowing, resizing, smooth noise.

Kept apart from the loaders so the procedural phantoms use exactly the same window and
resampling as the real CT slice and user DICOM folders.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from fedpriv.data._validation import check_int, check_positive_float

#: Soft-tissue window (centre, width) in Hounsfield units, the usual abdominal setting.
SOFT_TISSUE_WINDOW = (40.0, 400.0)


def hounsfield_to_unit(
    hu: np.ndarray, window_center: float = 40.0, window_width: float = 400.0
) -> np.ndarray:
    """Maps Hounsfield units to ``[0, 1]`` through a linear display window.

    ``unit = clip((hu - (window_center - window_width / 2)) / window_width, 0, 1)``: the
    window's lower edge maps to 0, its upper edge to 1, and everything outside saturates,
    as on a radiology workstation. The DICOM standard's half-pixel offsets (``c - 0.5``,
    ``w - 1``) are left out: they matter for 12-bit display LUTs, not for model inputs.

    Args:
      hu: array of Hounsfield units (any shape).
      window_center: window level in HU (40 is soft tissue).
      window_width: window width in HU, > 0 (400 is soft tissue).

    Returns:
      float32 array of the same shape in ``[0, 1]``.

    Raises:
      ValueError: if ``window_width`` is not a finite number > 0.

    Example:
      >>> hounsfield_to_unit(np.array([-1000.0, -160.0, 40.0, 240.0, 1000.0])).tolist()
      [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    window_width = check_positive_float("window_width", window_width)
    lower = float(window_center) - window_width / 2.0
    unit = (np.asarray(hu, dtype=np.float32) - np.float32(lower)) / np.float32(window_width)
    return np.clip(unit, 0.0, 1.0).astype(np.float32, copy=False)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the last two axes of ``image`` to ``size x size``, anti-aliased.

    Downscaling first low-passes with a Gaussian of ``sigma = (factor - 1) / 2`` pixels
    (the scikit-image convention), because plain interpolation at a coarser grid aliases
    fine structure (CT noise, bone edges) into spurious patterns. Interpolation is
    bilinear on pixel areas (``grid_mode``), so a 128 -> 32 resize keeps the field of view
    exactly; bilinear never overshoots, so a ``[0, 1]`` image stays in ``[0, 1]``.

    Args:
      image: ``[..., H, W]`` array; leading axes (e.g. a batch) are left alone.
      size: output height and width in pixels, >= 1.

    Returns:
      float32 array ``[..., size, size]``.

    Raises:
      ValueError: if ``size`` is not an integer >= 1 or ``image`` has fewer than 2 axes.
    """
    size = check_int("size", size, minimum=1)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 axes [..., H, W], got shape {image.shape}")
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image.copy()
    lead = (0.0,) * (image.ndim - 2)
    factors = (height / size, width / size)
    sigmas = tuple(max(0.0, (f - 1.0) / 2.0) for f in factors)
    if any(s > 0.0 for s in sigmas):
        image = ndi.gaussian_filter(image, sigma=lead + sigmas, mode="nearest")
    zoom = (1.0,) * (image.ndim - 2) + (size / height, size / width)
    out = ndi.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)
    return out.astype(np.float32, copy=False)


def smooth_noise(
    shape: tuple[int, ...], correlation_pixels: float, generator: np.random.Generator
) -> np.ndarray:
    """Spatially correlated Gaussian noise with unit standard deviation.

    Tissue texture and scanner noise in CT are correlated over a few pixels (the
    reconstruction kernel); white noise would look like salt and pepper instead.

    Args:
      shape: ``[..., H, W]``; only the last two axes are smoothed.
      correlation_pixels: standard deviation of the smoothing Gaussian, in pixels.
      generator: host-side generator.

    Returns:
      float32 array of ``shape`` whose entries have (approximately) unit variance.
    """
    white = generator.standard_normal(shape, dtype=np.float32)
    sigma = (0.0,) * (len(shape) - 2) + (correlation_pixels, correlation_pixels)
    field = ndi.gaussian_filter(white, sigma=sigma, mode="wrap")
    # A Gaussian filter of std s shrinks white noise's std by 1 / (2 sqrt(pi) s) in 2-D;
    # rescaling by the measured std is exact for any s and cheaper than the algebra.
    std = field.std(axis=(-2, -1), keepdims=True)
    return field / np.maximum(std, np.float32(1e-6))
