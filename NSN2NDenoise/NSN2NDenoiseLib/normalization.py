"""Robust intensity normalisation (METHOD.md section 1) and its exact inverse.

The percentiles ``low`` and ``high`` of the volume map to 0 and 1; values outside are kept (no clipping), so
the inverse restores the input's units exactly (HU for CT) up to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class IntensityMap:
    """Affine map between the input's units and normalised units: ``n = (x - offset) / scale``."""

    offset: float
    scale: float


def fit_intensity_map(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityMap:
    """Fit the map that sends the given percentiles of ``volume`` to 0 and 1.

    Raises
    ------
    InputError
        If the volume is constant (nothing to denoise, and no scale to learn).
    """
    low, high = np.percentile(volume, percentiles)
    if not high > low:
        vmin, vmax = float(np.min(volume)), float(np.max(volume))
        if not vmax > vmin:
            raise InputError(f"The volume is constant (every voxel is {vmin:g}): there is no noise to remove.")
        # Mostly constant with a few outliers (e.g. a padded CT): fall back to the full range.
        low, high = vmin, vmax
    return IntensityMap(offset=float(low), scale=float(high - low))


def normalize(volume: np.ndarray, imap: IntensityMap) -> np.ndarray:
    """Input units -> normalised float32 units."""
    return ((np.asarray(volume, dtype=np.float64) - imap.offset) / imap.scale).astype(np.float32)


def denormalize(volume: np.ndarray, imap: IntensityMap) -> np.ndarray:
    """Normalised units -> input units, as float32. Exact inverse of :func:`normalize`."""
    return (np.asarray(volume, dtype=np.float64) * imap.scale + imap.offset).astype(np.float32)
