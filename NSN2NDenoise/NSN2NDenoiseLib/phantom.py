"""A synthetic, anatomy-like test volume with realistic noise, built without any download.

Used by ``nsn2n demo`` and the tests. Arrays are (K, J, I) = (slice, row, column), intensities in HU-like units.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Slice step in units of the head's half-height: about 1.5 mm slices of a 180 mm head, as in a clinical CT.
SLICE_STEP = 0.017


def make_phantom(shape: tuple[int, int, int] = (24, 96, 96), seed: int = 0) -> np.ndarray:
    """A clean head-like phantom (float32, HU-like): air -1000, soft tissue 40, brain 30, skull 1000,
    ventricles 5, a few small bright and dark lesions. The slices are a slab around the head's centre, one
    :data:`SLICE_STEP` apart, so that the anatomy changes from slice to slice as much as in a clinical CT.
    """
    rng = np.random.default_rng(seed)
    k, j, i = shape
    z = (np.arange(k) - (k - 1) / 2.0) * SLICE_STEP
    zz, yy, xx = np.meshgrid(z, np.linspace(-1, 1, j), np.linspace(-1, 1, i), indexing="ij")
    vol = np.full(shape, -1000.0, dtype=np.float64)
    # Head outline shrinks towards the top and bottom slices, as a real head does.
    scale = 1.0 - 0.25 * zz**2
    r = np.sqrt((xx / (0.85 * scale)) ** 2 + (yy / (0.95 * scale)) ** 2)
    vol[r <= 1.0] = 40.0  # scalp / soft tissue
    vol[r <= 0.93] = 1000.0  # skull
    vol[r <= 0.85] = 30.0  # brain
    # Ventricles: two ellipses that move apart along the slice axis.
    for side in (-1, 1):
        cx = side * (0.18 + 0.05 * zz)
        rv = np.sqrt(((xx - cx) / 0.09) ** 2 + ((yy + 0.1) / 0.28) ** 2)
        vol[(rv <= 1.0) & (r <= 0.85)] = 5.0
    # Small lesions spanning a few slices each.
    for _ in range(8):
        c = np.array([rng.uniform(z[0], z[-1]), *rng.uniform(-0.5, 0.5, 2)])
        rad = rng.uniform(0.06, 0.14)
        d = np.sqrt(((zz - c[0]) / (2.5 * rad)) ** 2 + ((yy - c[1]) / rad) ** 2 + ((xx - c[2]) / rad) ** 2)
        vol[(d <= 1.0) & (r <= 0.8)] = rng.choice([60.0, 80.0, 15.0])
    # Gentle grey/white-matter-like texture, smooth in 3D.
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), (3.0, 2.0, 2.0))
    texture *= 8.0 / max(texture.std(), 1e-12)
    vol[r <= 0.85] += texture[r <= 0.85]
    # Partial-volume blur of about one voxel in-plane, less across slices.
    return ndimage.gaussian_filter(vol, (0.5, 0.8, 0.8)).astype(np.float32)


def add_inplane_correlated_noise(
    clean: np.ndarray, sigma: float, correlation_px: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``clean`` plus Gaussian noise of standard deviation ``sigma`` (input units), blurred in-plane by a
    Gaussian of ``correlation_px`` pixels (correlated within a slice, as CT streaks and k-space filtering make
    it) and independent between slices. Returns float32.
    """
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(clean.shape)
    if correlation_px > 0:
        noise = ndimage.gaussian_filter(noise, (0.0, correlation_px, correlation_px))
    noise /= noise.reshape(noise.shape[0], -1).std(axis=1).reshape(-1, 1, 1)
    return (clean + sigma * noise).astype(np.float32)


def psnr(reference: np.ndarray, image: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over the whole volume for a stated ``data_range``."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)
