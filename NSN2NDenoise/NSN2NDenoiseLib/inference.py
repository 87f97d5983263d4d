"""Denoising every slice with the trained network (METHOD.md section 5), and the optional safeguard.

``slices`` is (N, H, W) float32 in normalised units on the run's device, slice axis first; outputs have the
same shape. Whole slices go through the network in batches (it pads to a multiple of 2**depth itself).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import InferenceConfig
from .errors import CancelledError
from .training import _autocast, dihedral, inverse_dihedral
from .weights import box_mean

ProgressFn = Callable[[str, int, int, "float | None"], None]


def predict_slices(
    net: torch.nn.Module,
    slices: torch.Tensor,
    cfg: InferenceConfig,
    mixed_precision: bool = False,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """f(x_i) for every slice, first and last included; with ``cfg.tta`` the mean over the 8 flips/rotations.

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true between batches.
    """
    n = slices.shape[0]
    out = torch.empty_like(slices)
    transforms = range(8) if cfg.tta else (0,)
    with torch.no_grad():
        for start in range(0, n, cfg.batch_size):
            if is_cancelled is not None and is_cancelled():
                raise CancelledError("Inference was cancelled; no result was produced.")
            batch = slices[start : start + cfg.batch_size].unsqueeze(1)
            acc = torch.zeros_like(batch)
            for k in transforms:
                with _autocast(slices.device, mixed_precision):
                    y = net(dihedral(batch, k)).float()
                acc += inverse_dihedral(y, k)
            out[start : start + batch.shape[0]] = (acc / len(transforms)).squeeze(1)
            if progress is not None:
                progress("inference", min(n, start + cfg.batch_size), n, None)
    return out


def apply_safeguard(noisy: torch.Tensor, denoised: torch.Tensor, sigma: float, factor: float) -> torch.Tensor:
    """Blend back toward the input where the removed residual is far above the noise level.

    The removed residual r = x - f(x) should look like noise of standard deviation ``sigma`` (normalised
    units). Where its local RMS (5x5 box) exceeds ``factor * sigma`` the network removed structure, not noise:
    there the output keeps the fraction 1 - alpha of the residual, alpha = factor * sigma / local RMS.
    """
    residual = noisy - denoised
    local_rms = box_mean(residual * residual, 5).sqrt()
    alpha = (factor * sigma / local_rms.clamp_min(1e-12)).clamp(max=1.0)
    return denoised + (1.0 - alpha) * residual
