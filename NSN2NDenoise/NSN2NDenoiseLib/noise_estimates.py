"""Noise level and inter-slice noise correlation of a volume, from a sample of neighbouring slice pairs
(docs/METHOD.md section 6). Both go into the run report; the correlation warns when NS-N2N's assumption fails.

Slices are in normalised units, slice axis first (:class:`normalization.NormalizedSlices`).
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
    "estimate_inplane_lag1",
    "estimate_noise",
    "inplane_noise_lag1",
    "interslice_correlation",
    "masked_median",
    "noise_sigma",
    "sample_pairs",
]
