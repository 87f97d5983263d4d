"""Robust intensity normalisation (docs/METHOD.md section 1), its exact inverse, and normalised slices on demand.

The percentiles :data:`PERCENTILES` of the volume map to 0 and 1; values outside are kept (no clipping), so the
inverse restores the input's units exactly (HU for CT) up to float32 rounding. The engine never holds a normalised
(or float64) copy of the whole volume: :class:`NormalizedSlices` normalises the slices or patches it is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to 0 and 1: robust to outliers (metal, air padding)."""
MAX_SAMPLE_VOXELS = 2**24
"""Above this many voxels the percentiles are taken on every s-th slice (axis 0), so that fitting the map copies at
most this many voxels (64 MB of float32) instead of the whole volume."""


@dataclass(frozen=True)
class IntensityMap:
    """Affine map between the input's units and normalised units: ``n = (x - offset) / scale``."""

    offset: float
    scale: float


def fit_intensity_map(volume: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> IntensityMap:
    """Fit the map that sends the given percentiles of ``volume`` to 0 and 1.

    Raises
    ------
    InputError
        If the volume is constant (nothing to denoise, and no scale to learn).
    """
    step = max(1, math.ceil(volume.size / MAX_SAMPLE_VOXELS))
    sample = volume[::step] if volume.ndim > 0 else volume
    low, high = np.percentile(sample, percentiles)
    if not high > low:
        vmin, vmax = float(np.min(volume)), float(np.max(volume))
        if not vmax > vmin:
            raise InputError(f"The volume is constant (every voxel is {vmin:g}): there is no noise to remove.")
        # Mostly constant with a few outliers (e.g. a padded CT): fall back to the full range.
        low, high = vmin, vmax
    return IntensityMap(offset=float(low), scale=float(high - low))


def normalize(volume: np.ndarray, imap: IntensityMap) -> np.ndarray:
    """Input units -> normalised units, as a new float32 array."""
    out = np.array(volume, dtype=np.float32, copy=True)
    out -= np.float32(imap.offset)
    out /= np.float32(imap.scale)
    return out


def denormalize(volume: np.ndarray, imap: IntensityMap) -> np.ndarray:
    """Normalised units -> input units, as a new float32 array. Inverse of :func:`normalize`."""
    out = np.array(volume, dtype=np.float32, copy=True)
    out *= np.float32(imap.scale)
    out += np.float32(imap.offset)
    return out


class NormalizedSlices:
    """Normalised float32 slices of a volume, slice axis first, computed on demand.

    Parameters
    ----------
    volume : ndarray (K, J, I)
        The input in its own units and dtype; it is only read, never copied whole.
    axis : int
        The slice axis of ``volume`` (0=K, 1=J, 2=I).
    imap : IntensityMap
    """

    def __init__(self, volume: np.ndarray, axis: int, imap: IntensityMap) -> None:
        self.stack = np.moveaxis(volume, axis, 0)  # a view: (N, H, W)
        self.imap = imap

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W): slices, then rows and columns of a slice."""
        return tuple(self.stack.shape)  # type: ignore[return-value]

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Slices start..stop-1, normalised, float32 (stop - start, H, W)."""
        return normalize(self.stack[start:stop], self.imap)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Slices ``index`` (an int array), normalised, float32 (len(index), H, W)."""
        return normalize(self.stack[index], self.imap)

    def patch(self, index: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
        """Normalised patches of slices ``index`` (an int array) at rows y..y+size-1, columns x..x+size-1:
        float32 (len(index), size, size)."""
        return normalize(self.stack[index, y : y + size, x : x + size], self.imap)
