"""Per-image reconstruction quality: MSE, PSNR and SSIM.

All three take two arrays of the same shape with a leading example axis and return one
score per example (``[N]``). They are jitted; nothing here looks at labels.

References:
  Wang, Bovik, Sheikh, Simoncelli. "Image Quality Assessment: From Error Visibility to
  Structural Similarity", IEEE TIP 13(4), 2004 (no arXiv version; DOI
  10.1109/TIP.2003.819861).
  Geiping et al. "Inverting Gradients -- How easy is it to break privacy in federated
  learning?", NeurIPS 2020, arXiv:2003.14053 (PSNR as the reconstruction score).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a, b, *, fn: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{fn}: the two arrays must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{fn}: expected a leading example axis with at least one example, got shape {a.shape}")


@jax.jit
def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
    difference = a.astype(jnp.float32) - b.astype(jnp.float32)
    return jnp.mean(jnp.square(difference).reshape(difference.shape[0], -1), axis=1)


def mse(a, b) -> jax.Array:
    """Mean squared error per example.

    Args:
      a: ``[N, ...]`` array.
      b: ``[N, ...]`` array of the same shape.

    Returns:
      ``[N]`` float32, the mean over all axes but the first.

    Raises:
      ValueError: if the shapes differ or there is no example.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_pair(a, b, fn="mse")
    return _mse(a, b)


@jax.jit
def _psnr(a: jax.Array, b: jax.Array, data_range: jax.Array) -> jax.Array:
    error = _mse(a, b)
    peak = jnp.square(jnp.asarray(data_range, jnp.float32))
    return jnp.where(error > 0, 10.0 * jnp.log10(peak / jnp.where(error > 0, error, 1.0)), jnp.inf)


def psnr(a, b, data_range: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio per example, ``10 log10(data_range**2 / MSE)`` in dB.

    Args:
      a: ``[N, ...]`` array.
      b: ``[N, ...]`` array of the same shape.
      data_range: the span of valid values (1.0 for images in ``[0, 1]``).

    Returns:
      ``[N]`` float32; ``+inf`` where the two examples are identical.

    Raises:
      ValueError: if the shapes differ, there is no example, or ``data_range <= 0``.

    Example:
      >>> import numpy as np
      >>> round(float(psnr(np.zeros((1, 4, 4, 1)), np.full((1, 4, 4, 1), 0.1))[0]), 4)  # MSE 0.01
      20.0
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_pair(a, b, fn="psnr")
    _check_data_range(data_range, fn="psnr")
    return _psnr(a, b, data_range)


def gaussian_window(size: int, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """A normalised 1-D Gaussian of odd ``size``; its outer product is Wang's 2-D window."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def ssim_window_size(height: int, width: int) -> int:
    """The window side used for an image: 11, or the largest odd size that fits."""
    side = min(SSIM_WINDOW, height, width)
    return side if side % 2 == 1 else side - 1


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable Gaussian filtering of ``[M, H, W]`` maps, keeping only 'valid' positions."""
    k = jnp.asarray(window, jnp.float32)
    size = window.shape[0]
    # Full-precision contraction: on GPUs the default matmul precision (TF32) would
    # visibly perturb SSIM values close to 1.
    rows = jnp.stack([x[:, i : x.shape[1] - size + 1 + i, :] for i in range(size)], axis=-1)
    x = jnp.einsum("mhwk,k->mhw", rows, k, precision=jax.lax.Precision.HIGHEST)
    cols = jnp.stack([x[:, :, j : x.shape[2] - size + 1 + j] for j in range(size)], axis=-1)
    return jnp.einsum("mhwk,k->mhw", cols, k, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("window_size",))
def _ssim(a: jax.Array, b: jax.Array, data_range: jax.Array, window_size: int) -> jax.Array:
    n, height, width, channels = a.shape
    window = gaussian_window(window_size)
    # One map per (example, channel): [N, H, W, C] -> [N * C, H, W].
    a = jnp.moveaxis(a.astype(jnp.float32), -1, 1).reshape(n * channels, height, width)
    b = jnp.moveaxis(b.astype(jnp.float32), -1, 1).reshape(n * channels, height, width)
    c1 = jnp.square(SSIM_K1 * data_range)
    c2 = jnp.square(SSIM_K2 * data_range)
    mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a * mu_a
    var_b = _filter_valid(b * b, window) - mu_b * mu_b
    cov = _filter_valid(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_map = jnp.mean(ssim_map, axis=(1, 2))
    return jnp.mean(per_map.reshape(n, channels), axis=1)


def ssim(a, b, data_range: float = 1.0) -> jax.Array:
    """Structural similarity per image (Wang et al. 2004), averaged over channels.

    Local statistics use an 11x11 Gaussian window with ``sigma = 1.5`` and Wang's
    constants ``K1 = 0.01``, ``K2 = 0.03``; (co)variances are the window-weighted
    population moments of the paper (no sample-size correction; scikit-image's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``).
    The SSIM map is kept only where the window lies inside the image ('valid'
    positions, as scikit-image crops its map) and averaged over them, then over channels.

    Images smaller than the window (down to 3 pixels a side; 8x8 is the smallest size the
    toolkit's models take) use the largest odd window that fits, with the same ``sigma``
    renormalised over that window; an 8x8 image is scored with a 7x7 window.

    Args:
      a: ``[N, H, W, C]`` images.
      b: ``[N, H, W, C]`` images of the same shape.
      data_range: the span of valid values (1.0 for images in ``[0, 1]``).

    Returns:
      ``[N]`` float32 SSIM, 1.0 for identical images.

    Raises:
      ValueError: if the shapes differ or are not ``[N, H, W, C]``, a side is below 3
        pixels, or ``data_range <= 0``.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_pair(a, b, fn="ssim")
    if a.ndim != 4:
        raise ValueError(f"ssim: expected images of shape [N, H, W, C], got shape {a.shape}")
    if min(a.shape[1], a.shape[2]) < 3:
        raise ValueError(f"ssim: images must be at least 3x3 pixels, got shape {a.shape}")
    _check_data_range(data_range, fn="ssim")
    return _ssim(a, b, data_range, window_size=ssim_window_size(a.shape[1], a.shape[2]))


def _check_data_range(data_range, *, fn: str) -> None:
    if isinstance(data_range, bool) or not np.isscalar(data_range) or not float(data_range) > 0:
        raise ValueError(f"{fn}: data_range must be a number > 0, got {data_range!r}")
