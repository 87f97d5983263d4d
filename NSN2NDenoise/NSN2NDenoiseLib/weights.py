"""Weight maps W_i for neighbouring slice pairs (METHOD.md section 2).

All arrays here are torch tensors on the run's device, in normalised intensity units, with slices along axis 0:
``slices`` is (N, H, W) and the weight maps are (N - 1, H, W), map i belonging to the pair (x_i, x_i+1).
W = 1 marks pixels where the two slices show the same anatomy (a valid Noise2Noise target), 0 where they differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import WeightConfig

# Pixels brighter than this (normalised units) after low-pass filtering count as body for the median statistics.
BODY_THRESHOLD = 0.1
# Pairs are processed in chunks so that 512x512 slices with median filtering fit in a few hundred MB.
CHUNK = 16


@dataclass(frozen=True)
class WeightMaps:
    """Weights of every pair and their summary."""

    maps: torch.Tensor
    """(N - 1, H, W) float32 weights in [0, 1]."""
    matched_fraction: float
    """Mean weight over the body of all pairs: the share of pixels that serve as Noise2Noise targets."""
    matched_per_pair: list[float]
    """Mean weight over the body, pair by pair."""
    keep: torch.Tensor | None = None
    """(M, H, W) weight of the self term: 1 - W, or the strong-mismatch part of it (``keep_factor``)."""


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) images, reflect padding, truncated at 3 sigma."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    coords = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    x = images.unsqueeze(1)
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"
    x = F.pad(x, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def box_mean(images: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` box of (B, H, W) images, reflect padding."""
    if window == 1:
        return images
    r = window // 2
    mode = "reflect" if r < min(images.shape[-2:]) else "replicate"
    x = F.pad(images.unsqueeze(1), (r, r, r, r), mode=mode)
    return F.avg_pool2d(x, window, stride=1).squeeze(1)


def median_filter(images: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Median over a ``window`` x ``window`` box of (B, H, W) images, reflect padding."""
    r = window // 2
    mode = "reflect" if r < min(images.shape[-2:]) else "replicate"
    x = F.pad(images.unsqueeze(1), (r, r, r, r), mode=mode)
    patches = F.unfold(x, window)  # (B, window*window, H*W)
    med = patches.median(dim=1).values
    return med.view(images.shape)


def lowpass(images: torch.Tensor, cfg: WeightConfig) -> torch.Tensor:
    """The configured low-pass filter of (B, H, W) images."""
    out = gaussian_blur(images, cfg.lowpass_sigma)
    if cfg.lowpass == "gaussian_median":
        out = median_filter(out, 5)
    return out


def _robust_std(values: torch.Tensor) -> torch.Tensor:
    med = values.median()
    return 1.4826 * (values - med).abs().median()


def _pair_weights(
    a: torch.Tensor, b: torch.Tensor, cfg: WeightConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, body masks and self-term weights, each (B, H, W), of the pairs (a[k], b[k])."""
    ones = torch.ones_like(a)
    if cfg.lowpass != "none":
        la, lb = lowpass(a, cfg), lowpass(b, cfg)
        body = torch.maximum(la, lb) > BODY_THRESHOLD
    else:
        body = torch.maximum(gaussian_blur(a, 2.0), gaussian_blur(b, 2.0)) > BODY_THRESHOLD
    weights = torch.empty_like(a)
    keep = torch.empty_like(a)
    for k in range(a.shape[0]):
        mask_k = body[k] if body[k].float().mean() > 0.01 else torch.ones_like(body[k])
        w = ones[k]
        if cfg.lowpass != "none":
            r = lb[k] - la[k]
            tau = torch.tensor(cfg.tau, device=a.device, dtype=a.dtype)
            if cfg.adaptive_tau:
                # The low-passed noise alone can exceed a fixed tau when noise is strong (METHOD.md section 2).
                tau = torch.maximum(tau, 3.0 * _robust_std(r[mask_k]))
            w = torch.exp(-0.5 * (r / tau) ** 2) if cfg.soft else (r.abs() <= tau).to(a.dtype)
        if cfg.energy_test:
            d = b[k] - a[k]
            e = box_mean((d * d).unsqueeze(0), cfg.energy_window)[0]
            ref = e[mask_k].median().clamp_min(1e-12)
            ratio = e / (cfg.energy_factor * ref)
            w_e = torch.exp(-0.5 * ratio**2) / math.exp(-0.5) if cfg.soft else (ratio <= 1.0).to(a.dtype)
            w = w * w_e.clamp(max=1.0)
        keep[k] = 1.0 - w
        if cfg.energy_test and cfg.keep_factor > 0:
            keep[k] = keep[k] * (e > cfg.keep_factor * ref).to(a.dtype)
        weights[k] = w
    return weights, body, keep


def _maps(a_all: torch.Tensor, b_all: torch.Tensor, cfg: WeightConfig) -> WeightMaps:
    """Weights of the pairs (a_all[k], b_all[k]), processed in chunks; both (M, H, W)."""
    m = a_all.shape[0]
    maps = torch.empty(tuple(a_all.shape), device=a_all.device, dtype=torch.float32)
    keep = torch.empty_like(maps)
    per_pair: list[float] = []
    total_w = 0.0
    total_body = 0.0
    with torch.no_grad():
        for start in range(0, m, CHUNK):
            stop = min(m, start + CHUNK)
            w, body, kp = _pair_weights(a_all[start:stop].float(), b_all[start:stop].float(), cfg)
            maps[start:stop] = w
            keep[start:stop] = kp
            bodyf = body.float()
            sums_w = (w * bodyf).sum(dim=(1, 2))
            sums_b = bodyf.sum(dim=(1, 2))
            for sw, sb in zip(sums_w.tolist(), sums_b.tolist(), strict=True):
                per_pair.append(sw / sb if sb > 0 else 1.0)
                total_w += sw
                total_body += sb
    matched = total_w / total_body if total_body > 0 else 1.0
    return WeightMaps(maps=maps, matched_fraction=float(matched), matched_per_pair=per_pair, keep=keep)


def compute_weight_maps(slices: torch.Tensor, cfg: WeightConfig) -> WeightMaps:
    """Weight maps of all neighbouring pairs of ``slices`` (N, H, W), N >= 2, normalised units.

    Map i (of N - 1) belongs to the pair (x_i, x_i+1).
    """
    return _maps(slices[:-1], slices[1:], cfg)


# Weights of the pair means m_k = (x_i-k + x_i+k) / 2, k = 1, 2, ..., of the symmetric polynomial interpolation
# of slice i from its neighbours: 4 points (cubic, exact to degree 3) and 6 points (quintic, exact to degree 5).
# Noise variance of the interpolant, in units of one slice's: 1/2 for the 3-slice mean, 17/18 cubic, 1.31 quintic.
INTERPOLATION_WEIGHTS = {4: (4.0 / 3.0, -1.0 / 3.0), 6: (1.5, -0.6, 0.1)}


def interpolation_offset(slices: torch.Tensor, points: int = 4) -> torch.Tensor:
    """(N - 2, H, W): the 3-slice mean (x_i-1 + x_i+1) / 2 minus the ``points``-point polynomial interpolation of
    slice i = j + 1 from its neighbours (``INTERPOLATION_WEIGHTS``).

    Subtracted from the 3-slice mean it removes the mean's bias (half the second difference along the slice axis
    for a cubic, to higher order for a quintic). Near the first and last slices, where the neighbours it needs are
    missing, the next lower order is used, down to the 3-slice mean itself (offset zero).
    """
    n = slices.shape[0]
    mean1 = 0.5 * (slices[:-2] + slices[2:])
    offset = torch.zeros_like(mean1)
    for order in sorted(INTERPOLATION_WEIGHTS):
        half = order // 2  # neighbours needed on each side
        if order > points or n < 2 * half + 1:
            break
        interp = torch.zeros_like(slices[half : n - half])  # slices half .. n - half - 1
        for k, w in enumerate(INTERPOLATION_WEIGHTS[order], start=1):
            interp += w * 0.5 * (slices[half - k : n - half - k] + slices[half + k : n - half + k])
        offset[half - 1 : n - half - 1] = mean1[half - 1 : n - half - 1] - interp
    return offset


def compute_three_slice_maps(slices: torch.Tensor, cfg: WeightConfig, offset: torch.Tensor | None = None) -> WeightMaps:
    """Weight maps of the 3-slice target: map j (of N - 2) tests x_j+1 against (x_j + x_j+2) / 2 - offset[j].

    The same low-pass and energy tests as :func:`compute_weight_maps`, applied to the slice and the mean of its
    two neighbours, whose difference cancels anatomy that changes linearly along the slice axis; with
    ``offset = interpolation_offset(slices, points)`` the test is against the polynomial interpolation
    (``loss.target = 'cubic'`` or ``'quintic'``).
    """
    target = 0.5 * (slices[:-2] + slices[2:])
    if offset is not None:
        target = target - offset
    return _maps(slices[1:-1], target, cfg)
