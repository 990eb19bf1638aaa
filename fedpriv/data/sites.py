"""Scanner shift between hospitals: each site images its patients a little differently.

Real multi-site imaging data differ by more than case mix: vendors, reconstruction
kernels and calibration change contrast, sharpness and noise (feature skew). A
``ScannerProfile`` is one site's acquisition chain, applied to that site's images in the
``[0, 1]`` display domain.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from fedpriv.data._validation import check_generator, check_int
from fedpriv.data.cohort import ImageCohort

#: Ranges the per-site parameters are drawn from: gain and offset of the display
#: intensity, reconstruction-kernel blur in pixels, and additional noise std.
GAIN_RANGE = (0.85, 1.15)
OFFSET_RANGE = (-0.06, 0.06)
BLUR_SIGMA_RANGE = (0.0, 0.8)
NOISE_STD_RANGE = (0.0, 0.02)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScannerProfile:
    """One hospital's acquisition chain, as it changes a ``[0, 1]`` image.

    ``image -> clip(gain * blur(image, blur_sigma) + offset + noise_std * N(0, 1), 0, 1)``.

    Attributes:
      gain: multiplicative intensity change, > 0.
      offset: additive intensity change.
      blur_sigma: Gaussian blur in pixels (a smoother reconstruction kernel), >= 0.
      noise_std: standard deviation of added white noise, >= 0.
    """

    gain: float
    offset: float
    blur_sigma: float
    noise_std: float

    def __post_init__(self) -> None:
        for name in ("gain", "offset", "blur_sigma", "noise_std"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (is_number and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.gain <= 0:
            raise ValueError(f"gain must be > 0, got {self.gain!r}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma!r}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")


def sample_scanner_profiles(
    num_clients: int, generator: np.random.Generator
) -> tuple[ScannerProfile, ...]:
    """Draws an independent scanner profile for each of ``num_clients`` hospitals.

    Args:
      num_clients: number of hospitals, >= 1.
      generator: host-side generator.

    Returns:
      One ``ScannerProfile`` per hospital, parameters uniform in ``GAIN_RANGE``,
      ``OFFSET_RANGE``, ``BLUR_SIGMA_RANGE`` and ``NOISE_STD_RANGE``.
    """
    num_clients = check_int("num_clients", num_clients, minimum=1)
    generator = check_generator("generator", generator)
    draws = np.stack(
        [
            generator.uniform(*GAIN_RANGE, size=num_clients),
            generator.uniform(*OFFSET_RANGE, size=num_clients),
            generator.uniform(*BLUR_SIGMA_RANGE, size=num_clients),
            generator.uniform(*NOISE_STD_RANGE, size=num_clients),
        ],
        axis=1,
    )
    return tuple(
        ScannerProfile(gain=float(g), offset=float(o), blur_sigma=float(b), noise_std=float(n))
        for g, o, b, n in draws
    )


def apply_scanner_profile(
    images: np.ndarray, profile: ScannerProfile, generator: np.random.Generator
) -> np.ndarray:
    """Images of one site as its scanner would show them.

    Args:
      images: ``[N, H, W, 1]`` float in ``[0, 1]``.
      profile: the site's scanner.
      generator: host-side generator for the added noise.

    Returns:
      A new float32 ``[N, H, W, 1]`` array clipped to ``[0, 1]``.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, 1], got {images.shape}")
    shifted = images
    if profile.blur_sigma > 0:
        shifted = ndi.gaussian_filter(
            shifted, sigma=(0.0, profile.blur_sigma, profile.blur_sigma, 0.0), mode="nearest"
        )
    shifted = np.float32(profile.gain) * shifted + np.float32(profile.offset)
    if profile.noise_std > 0:
        shifted = shifted + np.float32(profile.noise_std) * generator.standard_normal(
            shifted.shape, dtype=np.float32
        )
    return np.clip(shifted, 0.0, 1.0).astype(np.float32, copy=False)


def apply_site_shift(
    cohort: ImageCohort,
    partition: Sequence[np.ndarray],
    profiles: Sequence[ScannerProfile],
    generator: np.random.Generator,
) -> ImageCohort:
    """The cohort with each client's records passed through that client's scanner.

    Records in no client's partition are left unchanged.

    Args:
      cohort: the cohort as acquired on a common scanner.
      partition: record indices of each client.
      profiles: one scanner profile per client.
      generator: host-side generator for the scanners' noise.

    Returns:
      A new cohort (labels and class names unchanged) named ``"<name>/site_shifted"``.

    Raises:
      ValueError: if ``profiles`` and ``partition`` have different lengths.
    """
    if len(profiles) != len(partition):
        raise ValueError(
            f"profiles must have one entry per client ({len(partition)}), got {len(profiles)}"
        )
    generator = check_generator("generator", generator)
    images = cohort.images.copy()
    for indices, profile in zip(partition, profiles):
        images[indices] = apply_scanner_profile(cohort.images[indices], profile, generator)
    return ImageCohort(
        images=images,
        labels=cohort.labels,
        class_names=cohort.class_names,
        name=f"{cohort.name}/site_shifted",
    )
