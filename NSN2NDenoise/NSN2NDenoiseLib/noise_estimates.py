"""Noise level and inter-slice noise correlation of a volume, from a sample of neighbouring slice pairs
(docs/METHOD.md section 6). Both go into the run report; the correlation warns when NS-N2N's assumption fails.

Slices are in normalised units, slice axis first (:class:`normalization.NormalizedSlices`), except for
:func:`body_sigma`, which reads a volume (K, J, I) in its own units for the Wiener stage.
"""

from __future__ import annotations

import numpy as np
import torch

from .normalization import NormalizedSlices
from .weights import body_mask, gaussian_blur, masked_median, robust_std

MAX_PAIRS = 32
"""Pairs sampled (evenly spaced) for the estimates: their median is stable, and a 600-slice volume costs no more
than a 33-slice one."""


def sample_pairs(n: int, max_pairs: int = MAX_PAIRS) -> list[int]:
    """Indices i of the pairs (x_i, x_i+1) to measure: all n - 1 pairs, or ``max_pairs`` evenly spaced ones."""
    if n - 1 <= max_pairs:
        return list(range(n - 1))
    return sorted(set(np.linspace(0, n - 2, max_pairs).round().astype(int).tolist()))


def noise_sigma(a: torch.Tensor, b: torch.Tensor) -> float:
    """Noise standard deviation from pairs of neighbouring slices a, b (P, H, W), median over pairs.

    For independent noise of std sigma in two matched slices, d = b - a has std sqrt(2) sigma; the median absolute
    deviation over the body makes the estimate robust to the anatomy that does change.
    """
    body = body_mask(gaussian_blur(torch.maximum(a, b), 2.0))
    return float((robust_std(b - a, body) / np.sqrt(2.0)).median())


def low_pass_gradient(low: torch.Tensor) -> torch.Tensor:
    """Sum of the absolute differences to the previous row and to the previous column of ``low`` (P, H, W): the
    low-passed gradient that tells flat anatomy from edges (0 in the first row and column)."""
    g = torch.zeros_like(low)
    g[:, 1:, :] += (low[:, 1:, :] - low[:, :-1, :]).abs()
    g[:, :, 1:] += (low[:, :, 1:] - low[:, :, :-1]).abs()
    return g


def interslice_correlation(a: torch.Tensor, b: torch.Tensor, flat_share: float = 0.3) -> float:
    """Correlation of the noise of neighbouring slices a, b (P, H, W), median over pairs.

    The residual x - Gaussian(x, 2 px) is compared between neighbours only where the anatomy is flat (the
    ``flat_share`` of body pixels with the smallest low-passed gradient), so that edges, which continue from slice
    to slice, do not pass for correlated noise. Measured on the development CT: 0.13-0.25 for low-dose CT noise,
    0.45 for in-plane correlated noise, 0.78 for noise correlated across slices (benchmarks/RESULTS.md). A nearly
    noise-free volume reads high too (the anatomy's own correlation): the warning says "may".
    """
    la, lb = gaussian_blur(a, 2.0), gaussian_blur(b, 2.0)
    ra, rb = a - la, b - lb

    body = body_mask(torch.minimum(la, lb))
    g = torch.maximum(low_pass_gradient(la), low_pass_gradient(lb))
    out = []
    for k in range(a.shape[0]):
        values = g[k][body[k]].float()
        flat = body[k] & (g[k] <= values.kthvalue(max(1, int(flat_share * values.numel()))).values)
        x = ra[k][flat] - ra[k][flat].mean()
        y = rb[k][flat] - rb[k][flat].mean()
        denom = ((x * x).sum() * (y * y).sum()).sqrt()
        if denom > 0:
            out.append(float((x * y).sum() / denom))
    return float(np.median(out)) if out else 0.0


def _lag1(x: torch.Tensor, keep: torch.Tensor, dim: int) -> float:
    """Pearson correlation of ``x`` with itself shifted by one pixel along ``dim``, over pixel pairs both in
    ``keep``."""
    n = x.shape[dim]
    a, b = x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1)
    both = keep.narrow(dim, 0, n - 1) & keep.narrow(dim, 1, n - 1)
    u, v = a[both].double(), b[both].double()
    if u.numel() < 2:
        return 0.0
    u, v = u - u.mean(), v - v.mean()
    denom = ((u * u).sum() * (v * v).sum()).sqrt()
    return float((u * v).sum() / denom) if denom > 0 else 0.0


def inplane_noise_lag1(a: torch.Tensor, b: torch.Tensor, flat_share: float = 0.3) -> tuple[float, float]:
    """Correlation of the noise of adjacent pixels within a slice, along rows and along columns, from pairs of
    neighbouring slices a, b (P, H, W).

    The difference b - a holds both slices' noise (independent between slices) and little anatomy where the
    anatomy is flat (the ``flat_share`` of body pixels with the smallest low-passed gradient); its lag-1
    correlation there is the noise's. Measured on the tuning set (benchmarks/RESULTS.md, "Protocol"): 0.02-0.09
    for white noise (Rician MRI, i.i.d. Gaussian CT), 0.31-0.34 along rows for low-dose CT, 0.88 for in-plane
    correlated noise.
    """
    la, lb = gaussian_blur(a, 2.0), gaussian_blur(b, 2.0)

    body = body_mask(torch.minimum(la, lb))
    g = torch.maximum(low_pass_gradient(la), low_pass_gradient(lb))
    values = g[body].float()  # never empty: body_mask falls back to the whole slice
    flat = body & (g <= values.kthvalue(max(1, int(flat_share * values.numel()))).values)
    d = b - a
    return _lag1(d, flat, 1), _lag1(d, flat, 2)


BODY_SLICES = 48
"""Slices :func:`body_sigma` reads at most: all of a volume that has no more, else evenly spaced slabs of
:data:`BODY_SLAB` slices (its memory does not grow with the volume)."""
BODY_SLAB = 8
"""Slices of each slab :func:`body_sigma` reads in a longer volume (even: no 2 x 2 x 2 cube straddles two slabs)."""
BODY_FLAT_SHARE = 0.5
"""Share of the body, the flattest (lowest smoothed gradient), whose Haar details :func:`body_sigma` reads."""


def _body_slabs(n: int) -> list[tuple[int, int]]:
    """The slice ranges [start, stop) that :func:`body_sigma` reads along an axis of ``n`` slices."""
    if n <= BODY_SLICES:
        return [(0, n)]
    starts = np.linspace(0, n - BODY_SLAB, BODY_SLICES // BODY_SLAB).round().astype(int) // 2 * 2
    return [(int(k), int(k) + BODY_SLAB) for k in sorted(set(starts.tolist()))]


def body_sigma(x: np.ndarray) -> float:
    """The standard deviation of white noise in ``x`` (K, J, I, the volume's units) read inside the body only, in the
    same units; 0.0 where it cannot be read (an axis shorter than 2 voxels).

    Each 2 x 2 x 2 cube's finest Haar detail (the sum of its voxels with the signs of a checkerboard, / sqrt(8)) has
    the noise's standard deviation for white noise and is nearly blind to smooth anatomy; the estimate is 1.4826 x
    the median of their magnitudes over the cubes whose first voxel lies in the flattest :data:`BODY_FLAT_SHARE` of
    the body (smallest gradient magnitude of the input smoothed by a Gaussian of 0.5, 2 and 2 voxels along K, J and
    I). The body is where the input smoothed in-plane (Gaussian, 2 voxels) is above Otsu's threshold (SimpleITK's),
    so that an MRI's dark background (Rayleigh noise, 0.66 x sigma, most of the volume) does not pull the reading
    down as a wavelet estimate over the whole volume does; flat, so that edges (CT bone) do not push it up. Reads
    at most :data:`BODY_SLICES` slices (:func:`_body_slabs`). Measured on the tuning set: 30.5-30.9 HU for 30 HU,
    11.34 for 11.35 and 22.64 for 22.7 (Rician MRI); it reads low on noise correlated in-plane (25.9 for 33.1 HU on
    low-dose CT), where it is not used (benchmarks/RESULTS.md).
    """
    import SimpleITK as sitk
    from scipy import ndimage

    if min(x.shape) < 2:
        return 0.0
    j, i = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    slabs = [np.asarray(x[a : a + (b - a) // 2 * 2, :j, :i], dtype=np.float32) for a, b in _body_slabs(x.shape[0])]
    v = np.concatenate(slabs)
    low = ndimage.gaussian_filter(v, (0, 2, 2))
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(256)
    otsu.Execute(sitk.GetImageFromArray(np.ascontiguousarray(low[:, ::2, ::2])))
    body = low > otsu.GetThreshold()
    if not body.any():  # a constant volume: no body to tell from a background
        body[:] = True
    grad = np.concatenate([ndimage.gaussian_gradient_magnitude(s, (0.5, 2, 2)) for s in slabs])
    flat = body & (grad <= np.quantile(grad[body], BODY_FLAT_SHARE))
    detail = np.zeros([n // 2 for n in v.shape], np.float32)
    for dk in (0, 1):
        for dj in (0, 1):
            for di in (0, 1):
                detail += (-1) ** (dk + dj + di) * v[dk::2, dj::2, di::2]
    at = flat[::2, ::2, ::2]
    if not at.any():  # a volume too small for the flat body to hold a cube's first voxel
        at[:] = True
    return float(1.4826 * np.median(np.abs(detail[at])) / np.sqrt(8.0))


def estimate_noise(source: NormalizedSlices, device: torch.device) -> tuple[float, float]:
    """(noise sigma in normalised units, inter-slice noise correlation) of ``source`` from :func:`sample_pairs`."""
    idx = sample_pairs(source.shape[0])
    a = torch.from_numpy(np.stack([source.slab(i, i + 1)[0] for i in idx])).to(device)
    b = torch.from_numpy(np.stack([source.slab(i + 1, i + 2)[0] for i in idx])).to(device)
    with torch.no_grad():
        return noise_sigma(a, b), interslice_correlation(a, b)


def estimate_inplane_lag1(source: NormalizedSlices, device: torch.device) -> tuple[float, float]:
    """:func:`inplane_noise_lag1` of ``source`` from :func:`sample_pairs`: (along rows, along columns) of a slice."""
    idx = sample_pairs(source.shape[0])
    a = torch.from_numpy(np.stack([source.slab(i, i + 1)[0] for i in idx])).to(device)
    b = torch.from_numpy(np.stack([source.slab(i + 1, i + 2)[0] for i in idx])).to(device)
    with torch.no_grad():
        return inplane_noise_lag1(a, b)


__all__ = [
    "body_sigma",
    "estimate_inplane_lag1",
    "estimate_noise",
    "inplane_noise_lag1",
    "interslice_correlation",
    "masked_median",
    "noise_sigma",
    "sample_pairs",
]
