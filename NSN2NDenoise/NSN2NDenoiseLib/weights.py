"""Weight maps of the training target (docs/METHOD.md section 2), built slab by slab.

Slice i's training target is the cubic interpolation of its four neighbours (:func:`interpolation_target`). Its
weight map is 1 where x_i and the target show the same anatomy (a valid Noise2Noise target), 0 where they differ;
its keep map marks the strongly unmatched pixels where the self term keeps the input. Maps are stored per slice as
one byte per voxel on the host, (N, H, W) in the stack's slice-first order; slices 0 and N - 1 have no target and
weigh 0. Tensors here are in normalised intensity units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import NSN2NConfig, WeightConfig
from .errors import CancelledError
from .normalization import NormalizedSlices

BODY_THRESHOLD = 0.1
"""Pixels brighter than this (normalised units) after low-pass filtering count as body for the median statistics."""
MIN_BODY_SHARE = 0.01
"""A slice whose body covers less than this share is treated as all body (air-only slices have no statistics)."""
SLAB = 16
"""Slices per slab of the weights phase: 512x512 slabs take a few tens of MB."""
CUBIC = (4.0 / 3.0, -1.0 / 3.0)
"""Weights of the pair means m_k = (x_i-k + x_i+k) / 2, k = 1, 2, of the cubic interpolation: exact to degree 3;
its noise variance is 17/18 of one slice's."""


def _backend(images: torch.Tensor, backend: str | None) -> str:
    return backend or ("scipy" if images.device.type == "cpu" else "torch")


def gaussian_blur(images: torch.Tensor, sigma: float, backend: str | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) images, reflect padding (the edge pixel not repeated), truncated at
    3 sigma. ``backend`` None: SciPy's 1D filters on the CPU (10x faster than torch's convolution of one channel),
    torch on a GPU; 'scipy' (CPU tensors only) or 'torch' to choose. Both give the same values (float rounding)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    small = radius >= min(images.shape[-2:])
    if _backend(images, backend) == "scipy":
        from scipy import ndimage

        mode = "nearest" if small else "mirror"  # scipy's 'mirror' is torch's 'reflect'
        out = ndimage.gaussian_filter1d(images.numpy(), sigma, axis=1, mode=mode, truncate=radius / sigma)
        out = ndimage.gaussian_filter1d(out, sigma, axis=2, mode=mode, truncate=radius / sigma, output=out)
        return torch.from_numpy(out)
    coords = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    x = images.unsqueeze(1)
    mode = "replicate" if small else "reflect"
    x = F.pad(x, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def box_mean(images: torch.Tensor, window: int, backend: str | None = None) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` box of (B, H, W) images, reflect padding; ``backend`` as for
    :func:`gaussian_blur`."""
    if window == 1:
        return images
    r = window // 2
    if _backend(images, backend) == "scipy":  # SciPy's separable box filter: 4x faster than torch's pooling
        from scipy import ndimage

        mode = "mirror" if r < min(images.shape[-2:]) else "nearest"
        return torch.from_numpy(ndimage.uniform_filter(images.numpy(), size=(1, window, window), mode=mode))
    mode = "reflect" if r < min(images.shape[-2:]) else "replicate"
    x = F.pad(images.unsqueeze(1), (r, r, r, r), mode=mode)
    return F.avg_pool2d(x, window, stride=1).squeeze(1)


def body_mask(low_passed: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the body of each low-passed image, or the whole image where the body is under
    :data:`MIN_BODY_SHARE` of it."""
    body = low_passed > BODY_THRESHOLD
    small = body.flatten(1).float().mean(dim=1) < MIN_BODY_SHARE
    return body | small.view(-1, 1, 1)


MEDIAN_PIXELS = 2**16
"""Medians of larger images are taken on every second row and column: a 512x512 slice still gives 65536 values,
and the median costs a quarter (images up to 256x256 are exact)."""


def masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) median of each image of ``values`` (B, H, W) over its ``mask`` (see :data:`MEDIAN_PIXELS`)."""
    if values.shape[-1] * values.shape[-2] > MEDIAN_PIXELS:
        values, mask = values[:, ::2, ::2], mask[:, ::2, ::2]
    return torch.where(mask, values, torch.nan).flatten(1).nanmedian(dim=1).values


def robust_std(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) 1.4826 x the median absolute deviation of each image over its mask: the noise std for Gaussian noise,
    robust to the anatomy that differs."""
    med = masked_median(values, mask).view(-1, 1, 1)
    return 1.4826 * masked_median((values - med).abs(), mask)


def match_maps(
    x: torch.Tensor, target: torch.Tensor, cfg: WeightConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, keep maps and body masks, each (B, H, W), of slices ``x`` against ``target``.

    A pixel matches when both tests pass: the low-pass test |G(target) - G(x)| <= tau, tau = max(cfg.tau,
    3 x the robust spread of that residual over the body), and the energy test box_mean((target - x)^2) <=
    energy_factor x its body median. It is kept (self term) when unmatched and its energy exceeds keep_factor x
    the body median (every unmatched pixel with keep_factor = 0).
    """
    lx, lt = gaussian_blur(x, cfg.lowpass_sigma), gaussian_blur(target, cfg.lowpass_sigma)
    body = body_mask(torch.maximum(lx, lt))
    r = lt - lx
    tau = torch.clamp(3.0 * robust_std(r, body), min=cfg.tau).view(-1, 1, 1)
    energy = box_mean((target - x) ** 2, cfg.energy_window)
    ref = masked_median(energy, body).clamp_min(1e-12).view(-1, 1, 1)
    matched = (r.abs() <= tau) & (energy <= cfg.energy_factor * ref)
    keep = ~matched
    if cfg.keep_factor > 0:
        keep &= energy > cfg.keep_factor * ref
    return matched, keep, body


def interpolate(m1: torch.Tensor, m2: torch.Tensor, has_cubic: torch.Tensor | bool, ramp: float = 1.0) -> torch.Tensor:
    """The training target from the pair means m1 = (x_i-1 + x_i+1) / 2 and m2 = (x_i-2 + x_i+2) / 2: the 3-slice
    mean m1 moved by ``ramp`` (0..1) toward the cubic interpolation (4/3) m1 - (1/3) m2 where ``has_cubic`` (slice
    i has two neighbours on each side), else m1 itself."""
    cubic = CUBIC[0] * m1 + CUBIC[1] * m2
    return torch.where(torch.as_tensor(has_cubic, device=m1.device), m1 + ramp * (cubic - m1), m1)


def cubic_target(stack: torch.Tensor, start: int, n: int, ramp: float = 1.0) -> torch.Tensor:
    """Targets (M - 4, H, W) of the slices i = start .. start + M - 5 from a (M, H, W) ``stack`` holding slices
    start - 2 .. start + M - 3 of a volume of ``n`` slices (:func:`interpolate`; the cubic needs 2 <= i <= n - 3).
    Rows of the stack outside the volume may hold anything: they are not used."""
    m1 = 0.5 * (stack[1:-3] + stack[3:-1])
    m2 = 0.5 * (stack[:-4] + stack[4:])
    i = torch.arange(start, start + stack.shape[0] - 4, device=stack.device)
    return interpolate(m1, m2, ((i >= 2) & (i <= n - 3)).view(-1, 1, 1), ramp)


@dataclass(frozen=True)
class TrainingTargets:
    """The maps training needs, per slice of the stack (slice axis first), one byte per voxel, on the host."""

    weights: np.ndarray
    """(N, H, W) uint8 in {0, 1}: 1 where x_i matches its cubic target (0 on slices 0 and N - 1)."""
    keep: np.ndarray
    """(N, H, W) uint8 in {0, 1}: the self term's pixels."""
    pair_weights: np.ndarray | None
    """(N - 1, H, W) uint8: the match of the pair (x_i, x_i+1), used by the RC term (None when lambda_rc = 0)."""
    matched_fraction: float
    """Share of body pixels of slices 1..N-2 whose target matches: the share of pixels that train as Noise2Noise."""
    matched_per_slice: list[float]
    """That share slice by slice, for slices 1..N-2."""


def compute_targets(
    source: NormalizedSlices,
    cfg: NSN2NConfig,
    device: torch.device,
    progress: Callable[[str, int, int, float | None], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> TrainingTargets:
    """The weight and keep maps of every slice's cubic target (and the pair maps when ``loss.lambda_rc > 0``),
    computed in slabs of :data:`SLAB` slices on ``device``; progress and cancel are checked per slab.

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true between slabs.
    """
    n, h, w = source.shape
    weights = np.zeros((n, h, w), dtype=np.uint8)
    keep = np.zeros((n, h, w), dtype=np.uint8)
    pairs = np.zeros((n - 1, h, w), dtype=np.uint8) if cfg.loss.lambda_rc > 0 else None
    per_slice: list[float] = []
    total_w = total_b = 0.0
    starts = list(range(1, n - 1, SLAB))
    with torch.no_grad():
        for done, start in enumerate(starts):
            if is_cancelled is not None and is_cancelled():
                raise CancelledError("The run was cancelled while building weight maps; no result was produced.")
            stop = min(n - 1, start + SLAB)
            lo, hi = max(0, start - 2), min(n, stop + 2)
            block = torch.from_numpy(source.slab(lo, hi)).to(device)
            # Pad to rows start - 2 .. stop + 1 so that cubic_target's indexing is uniform; padded rows are unused.
            pad_lo, pad_hi = lo - (start - 2), (stop + 2) - hi
            stack = torch.cat([block[:1]] * pad_lo + [block] + [block[-1:]] * pad_hi) if (pad_lo or pad_hi) else block
            x = stack[2:-2]
            matched, kp, body = match_maps(x, cubic_target(stack, start, n), cfg.weights)
            weights[start:stop] = matched.cpu().numpy()
            keep[start:stop] = kp.cpu().numpy()
            sums_w = (matched & body).flatten(1).sum(dim=1).tolist()
            sums_b = body.flatten(1).sum(dim=1).tolist()
            for sw, sb in zip(sums_w, sums_b, strict=True):
                per_slice.append(sw / sb if sb > 0 else 1.0)
                total_w += sw
                total_b += sb
            if progress is not None:
                progress("weights", done + 1, len(starts), None)
    if pairs is not None:
        for start in range(0, n - 1, SLAB):
            stop = min(n - 1, start + SLAB)  # pairs start .. stop - 1
            block = torch.from_numpy(source.slab(start, stop + 1)).to(device)
            pm, _, _ = match_maps(block[:-1], block[1:], cfg.weights)
            pairs[start:stop] = pm.cpu().numpy()
    matched_fraction = total_w / total_b if total_b > 0 else 1.0
    return TrainingTargets(weights, keep, pairs, float(matched_fraction), per_slice)
